"""The plugin template (plugins/_template, cookiecutter) renders, for every component kind it offers, into a plugin
that installs and passes its own tests, so the path a third-party author follows stays green (simonw/llm-plugin's
habit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[1] / "plugins" / "_template"

cookiecutter_main = pytest.importorskip(
    "cookiecutter.main", reason="cookiecutter is not installed (pip install cookiecutter) - cannot render the template"
)


def _require_offline_build_backend() -> None:
    """The rendered plugin is built without network (--no-build-isolation), so this environment's setuptools
    must support its pyproject (PEP 639 licence string: setuptools>=77)."""
    import importlib.metadata

    from packaging.version import Version

    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed: pip install 'setuptools>=77' to build the rendered template offline")
    if Version(version) < Version("77"):
        pytest.skip(f"setuptools {version} cannot build the rendered template offline: pip install 'setuptools>=77'")


def _render(tmp_path: Path, **context: str) -> Path:
    return Path(
        cookiecutter_main.cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(tmp_path / "out"), extra_context=context
        )
    )


KINDS = [
    pytest.param("vq"),
    pytest.param("encoder", marks=pytest.mark.slow),
    pytest.param("fusion", marks=pytest.mark.slow),
    pytest.param("preset", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind", KINDS)
def test_template_renders_installs_and_passes_its_tests(tmp_path, kind):
    _require_offline_build_backend()
    rendered = _render(tmp_path, plugin_name=f"acme-{kind}", component_kind=kind, description="Acme component")
    package = rendered / "src" / f"toklip_plugin_acme_{kind}"
    assert rendered.name == f"toklip-plugin-acme-{kind}" and (package / "plugin.py").is_file()
    assert (package / "model.py").is_file() == (kind != "preset")
    assert bool(list(package.glob("*.json"))) == (kind == "preset")
    site = tmp_path / "site"
    install = subprocess.run(  # a real (non-editable) install: a preset file missing from package-data fails
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--no-index", "--target", str(site), str(rendered)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
        "TOKLIP_STRICT_PLUGINS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=rendered, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-3000:]


@pytest.mark.parametrize("kind,bad", [
    ("vq", "Bad Name!"),
    ("vq", "llamagen"),
    ("encoder", "dfn"),  # an alias of a builtin encoder: the reserved names come from toklip's registry
    ("fusion", "weighted-sum"),
    ("fusion", "sum"),  # 'sum' itself and its -test variant are both builtin
    ("preset", "toklip-s"),
])
def test_template_refuses_unusable_names(tmp_path, kind, bad):
    from cookiecutter.exceptions import FailedHookException

    with pytest.raises(FailedHookException):
        _render(tmp_path, plugin_name=bad, component_kind=kind)


def test_template_accepts_a_name_reserved_only_in_another_kind(tmp_path):
    rendered = _render(tmp_path, plugin_name="concat", component_kind="vq")  # 'concat' is a fusion, not a VQ
    assert (rendered / "src" / "toklip_plugin_concat" / "plugin.py").is_file()
