"""Every test runs against an isolated toklip plugin host holding the builtins plus this plugin only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def host():
    import toklip_plugin_cosmos.plugin as plugin
    from toklip.plugins import PluginHost, use_host

    h = PluginHost(autoload=False, strict=True)
    h.register_plugin(plugin, name="cosmos")
    with use_host(h):
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


@pytest.fixture
def no_tf32():
    """fp32 parity on CUDA needs true fp32 convolutions and matmuls (TF32 is allowed by default for cuDNN)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
