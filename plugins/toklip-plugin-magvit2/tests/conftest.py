"""toklip's test kit (isolated plugin host: toklip's builtins plus this plugin, seeds, offline, GPU skips) and
this plugin's parity fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["toklip.testing.pytest_plugin"]

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def vectors() -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "vectors.safetensors"))
