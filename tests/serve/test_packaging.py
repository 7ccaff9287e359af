"""The page's files must ship in the wheel, not only in a source checkout."""

from __future__ import annotations

import fnmatch
import importlib.resources
from pathlib import Path

import pytest

from toklip.serve.app import STATIC_FILES

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[2]


def test_static_files_exist_and_are_package_data():
    names = ["index.html", *STATIC_FILES]
    for name in names:
        assert importlib.resources.files("toklip.serve").joinpath("static", name).is_file(), name
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["toklip"]
    for name in names:
        path = f"serve/static/{name}"
        assert any(fnmatch.fnmatch(path, p) for p in patterns), (
            f"{path} is not in [tool.setuptools.package-data] toklip = {patterns}: add \"serve/static/*\""
        )
