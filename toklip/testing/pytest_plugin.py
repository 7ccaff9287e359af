"""The one pytest kit of toklip, its kernels and every plugin. A conftest pulls it in with one line::

    pytest_plugins = ["toklip.testing.pytest_plugin"]

What every test then gets:
- an isolated plugin host holding toklip's builtins plus the plugins the project under test declares in its
  own ``pyproject.toml`` (``[project.entry-points.toklip]``, found from the test file upwards), never the other
  plugins installed on the machine. Function-, module- and session-scoped fixtures each run under one, so a
  module-scoped model fixture is as isolated as a test (fixture ``toklip_host``: the test's host);
- ``torch.manual_seed(0)`` before each test, ``HF_HUB_OFFLINE=1``, no ``TOKLIP_ATTN_BACKEND`` override;
- the ``gpu`` marker (skipped without CUDA) and the ``slow`` marker; the ``no_tf32`` fixture;
- plugin warnings shown once per test (the once-per-process memory is reset per test).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from toklip.core.host import PluginHost, use_host
from toklip.core.plugin_warnings import reset_shown

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.pop("TOKLIP_ATTN_BACKEND", None)  # a developer's override must not change what the tests run


@dataclass(frozen=True)
class ProjectPlugin:
    """One ``[project.entry-points.toklip]`` entry of the project under test."""

    name: str
    module: str
    dist: str | None
    version: str | None


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return _entry_points_by_regex(path.read_text(encoding="utf-8"))
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _entry_points_by_regex(text: str) -> dict:
    """Without a TOML parser: the [project] name/version and the toklip entry-point table (simple key = "value"
    lines, which is how pyproject files write them)."""
    project: dict = {}
    section = None
    eps: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[] ")
            continue
        match = re.fullmatch(r'"?([A-Za-z0-9_.-]+)"?\s*=\s*"([^"]*)"', line)
        if not match:
            continue
        if section == "project" and match.group(1) in {"name", "version"}:
            project[match.group(1)] = match.group(2)
        elif section == "project.entry-points.toklip":
            eps[match.group(1)] = match.group(2)
    project["entry-points"] = {"toklip": eps}
    return {"project": project}


@lru_cache(maxsize=64)
def project_plugins(start: Path) -> tuple[ProjectPlugin, ...]:
    """The toklip entry points declared by the nearest ``pyproject.toml`` at or above ``start``."""
    for folder in (start, *start.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            project = _read_toml(path).get("project", {})
            eps = project.get("entry-points", {}).get("toklip", {})
            return tuple(ProjectPlugin(n, v, project.get("name"), project.get("version")) for n, v in eps.items())
    return ()


def isolated_host(plugins: tuple[ProjectPlugin, ...] = (), *, strict: bool = True) -> PluginHost:
    """A host with toklip's builtins and ``plugins`` only: installed plugins are never autoloaded."""
    host = PluginHost(autoload=False, strict=strict)
    for plugin in plugins:
        module = importlib.import_module(plugin.module.partition(":")[0])
        obj = getattr(module, plugin.module.partition(":")[2]) if ":" in plugin.module else module
        host.register_plugin(obj, name=plugin.name, dist=plugin.dist, version=plugin.version)
    return host


def _folder(request: pytest.FixtureRequest) -> Path:
    path = getattr(request, "path", None)
    return Path(path).parent if path is not None else Path(request.config.rootpath)


@pytest.fixture(scope="session", autouse=True)
def toklip_session_host(request: pytest.FixtureRequest) -> Iterator[PluginHost]:
    """The host of session- and package-scoped fixtures (the project at pytest's root directory)."""
    with use_host(isolated_host(project_plugins(Path(request.config.rootpath)))) as host:
        yield host


@pytest.fixture(scope="module", autouse=True)
def toklip_module_host(request: pytest.FixtureRequest) -> Iterator[PluginHost]:
    """The host of module-scoped fixtures (a model built once per test module)."""
    with use_host(isolated_host(project_plugins(_folder(request)))) as host:
        yield host


@pytest.fixture(autouse=True)
def toklip_host(request: pytest.FixtureRequest) -> Iterator[PluginHost]:
    """The test's own host: builtins + the project's plugins, made current for the test."""
    reset_shown()
    with use_host(isolated_host(project_plugins(_folder(request)))) as host:
        yield host


@pytest.fixture(autouse=True)
def toklip_seed() -> None:
    """Every test starts from the same torch random state."""
    try:
        import torch
    except ModuleNotFoundError:  # pragma: no cover - toklip needs torch, but the kit must not
        return
    torch.manual_seed(0)


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
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the contract tests of :mod:`toklip.testing.contract` over the project's components."""
    for fixture, test_variants in (("toklip_test_component", True), ("toklip_component", False)):
        if fixture in metafunc.fixturenames:
            from toklip.testing.contract import components

            metafunc.parametrize(fixture, components(Path(metafunc.definition.path).parent,
                                                     test_variants=test_variants))


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
