"""The test kit of toklip, its kernels and every plugin.

In a conftest, one line: ``pytest_plugins = ["toklip.testing.pytest_plugin"]`` (``"toklip.testing"`` works too):
every test, module and session runs under an isolated plugin host (toklip's builtins + the plugins the project
under test declares in its pyproject.toml), seeded, offline, with the ``gpu`` marker skipped without CUDA.
Fixtures: ``toklip_host`` (the test's host), ``no_tf32``. See :mod:`toklip.testing.pytest_plugin`.

Helpers: :func:`isolated_host`, :func:`plugin_host`, :func:`temp_plugin`, :func:`fake_distribution`,
:func:`saved_tiny_model`, and the conformance checks in :mod:`toklip.testing.conformance` (``check_vq_tokenizer``,
``check_encoder``, ``check_projector``, ``check_attn_backend``, ``check_fusion``; the kinds table names each
kind's check).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from toklip.core.host import PluginHost, temp_plugin, use_host
from toklip.testing.pytest_plugin import (  # noqa: F401 - `pytest_plugins = ["toklip.testing"]` gets the kit too
    isolated_host,
    no_tf32,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    toklip_host,
    toklip_module_host,
    toklip_seed,
    toklip_session_host,
)

__all__ = [
    "fake_distribution", "isolated_host", "no_tf32", "plugin_host", "saved_tiny_model", "temp_plugin", "toklip_host",
]


@contextmanager
def plugin_host(plugin: object, name: str) -> Iterator[PluginHost]:
    """An isolated, strict host holding toklip's builtins and one plugin module, made current."""
    host = isolated_host()
    host.register_plugin(plugin, name=name)
    with use_host(host):
        yield host


def saved_tiny_model(folder: str | Path, *, seed: int = 1234):  # type: ignore[no-untyped-def]
    """Build ``toklip-test`` (seeded, eval mode) in an isolated host and ``save_pretrained`` it to ``folder``.

    -> the model; what session-scoped fixtures of serving/evaluation tests load by path."""
    import torch

    import toklip

    with use_host(isolated_host()):
        torch.manual_seed(seed)
        model = toklip.build("toklip-test").eval()
        model.save_pretrained(folder)
    return model


def fake_distribution(
    site: Path,
    dist_name: str,
    version: str = "0.1.0",
    *,
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    requires: Sequence[str] = (),
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Write an installed-distribution layout (``*.dist-info`` + modules) under ``site``.

    Add ``site`` to ``sys.path`` (``monkeypatch.syspath_prepend(site)``) and ``importlib.metadata`` sees the
    distribution and its entry points, exactly as after ``pip install``.
    """
    site.mkdir(parents=True, exist_ok=True)
    normalized = dist_name.replace("-", "_")
    info = site / f"{normalized}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    meta = [f"Metadata-Version: 2.1", f"Name: {dist_name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n", encoding="utf-8")
    if entry_points:
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {value}" for name, value in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")
    for module, source in (modules or {}).items():
        path = site / Path(*module.split("."))
        if "." in module:
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in list(path.parents)[: module.count(".")]:
                (parent / "__init__.py").touch()
        path.with_suffix(".py").write_text(textwrap.dedent(source), encoding="utf-8")
    return info
