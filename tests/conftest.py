"""Test setup: an isolated plugin host per test (installed plugins never leak in), seeds, and GPU skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toklip.core.host import PluginHost, use_host

FIXTURES = Path(__file__).parent / "fixtures"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.pop("TOKLIP_ATTN_BACKEND", None)


@pytest.fixture(autouse=True)
def isolated_host():
    """Builtins only; a developer's installed plugins are never loaded (llm/datasette lesson)."""
    host = PluginHost(autoload=False, strict=True)
    with use_host(host):
        yield host


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
