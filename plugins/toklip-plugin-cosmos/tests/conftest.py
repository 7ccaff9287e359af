"""Every test runs against an isolated toklip plugin host holding the builtins plus this plugin only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["toklip.testing"]  # fixtures (no_tf32, toklip_host) and the gpu-marker skip

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def host():
    import toklip_plugin_cosmos.plugin as plugin
    from toklip.testing import plugin_host

    with plugin_host(plugin, name="cosmos") as h:
        yield h


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def vectors() -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "vectors.safetensors"))
