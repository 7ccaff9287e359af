"""toklip's own suite uses the kit every plugin and the kernels use (toklip.testing.pytest_plugin): an isolated
plugin host per test, module and session (installed plugins never leak in), seeds, offline hub, GPU skips."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["toklip.testing.pytest_plugin"]

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
