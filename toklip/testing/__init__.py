"""Test helpers for toklip and for plugin authors. Opt in with ``pytest_plugins = ["toklip.testing"]``.

Fixtures:
- ``toklip_host``: an isolated plugin host (builtins only, installed plugins never autoloaded) made current
  for the test; register your plugin module into it with ``toklip_host.register_plugin(module, name=...)``.

Helpers: :func:`temp_plugin`, :func:`fake_distribution` and the conformance checks in
:mod:`toklip.testing.conformance` (``check_vq_tokenizer``, ``check_encoder``, ``check_projector``,
``check_attn_backend``, ``check_fusion``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from toklip.plugins import PluginHost, temp_plugin, use_host

__all__ = ["fake_distribution", "isolated_host", "temp_plugin", "toklip_host"]


@pytest.fixture
def toklip_host() -> Iterator[PluginHost]:
    """A fresh plugin host with only toklip's builtins, current for the duration of the test."""
    host = PluginHost(autoload=False, strict=True)
    with use_host(host):
        yield host


def isolated_host(*, strict: bool = True) -> PluginHost:
    return PluginHost(autoload=False, strict=strict)


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
