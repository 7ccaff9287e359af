"""Test helpers for toklip and for plugin authors. Opt in with ``pytest_plugins = ["toklip.testing"]``.

Fixtures:
- ``toklip_host``: an isolated plugin host (builtins only, installed plugins never autoloaded) made current
  for the test; register your plugin module into it with ``toklip_host.register_plugin(module, name=...)``.
- ``no_tf32``: true fp32 matmuls and convolutions on CUDA for the duration of a test (parity checks).

Tests marked ``@pytest.mark.gpu`` are skipped when torch sees no CUDA device.

Helpers: :func:`temp_plugin`, :func:`fake_distribution` and the conformance checks in
:mod:`toklip.testing.conformance` (``check_vq_tokenizer``, ``check_encoder``, ``check_projector``,
``check_attn_backend``, ``check_fusion``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from toklip.core.host import PluginHost, temp_plugin, use_host

__all__ = [
    "fake_distribution", "isolated_host", "no_tf32", "plugin_host", "saved_tiny_model", "temp_plugin", "toklip_host",
]


@pytest.fixture
def toklip_host() -> Iterator[PluginHost]:
    """A fresh plugin host with only toklip's builtins, current for the duration of the test."""
    host = PluginHost(autoload=False, strict=True)
    with use_host(host):
        yield host


def isolated_host(*, strict: bool = True) -> PluginHost:
    return PluginHost(autoload=False, strict=strict)


@contextmanager
def plugin_host(plugin: object, name: str) -> Iterator[PluginHost]:
    """An isolated, strict host holding toklip's builtins and one plugin module, made current.

    What a plugin's own conftest wants: ``with plugin_host(my_plugin, "mine") as host: yield host``."""
    host = PluginHost(autoload=False, strict=True)
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


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 parity on CUDA needs true fp32 convolutions and matmuls (TF32 is allowed by default for cuDNN)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
