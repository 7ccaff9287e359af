"""Kernel test setup.

Without a CUDA GPU the kernels run in the Triton interpreter: ``TRITON_INTERPRET=1`` must be set before
triton is imported (Triton picks interpreted vs compiled at ``@triton.jit`` time), so it is set here, at
conftest import, before anything imports toklip_kernels' kernel modules. With a GPU the same tests run the
compiled kernels on CUDA tensors, and the ``gpu`` tests run too.

Every test gets an isolated toklip plugin host (builtins + this package's plugin; installed plugins are
never autoloaded) and outputs poisoned with NaN, so an element a kernel forgets to write fails the test.
"""

from __future__ import annotations

import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("TOKLIP_ATTN_BACKEND", None)

import pytest  # noqa: E402

import toklip_kernels.plugin  # noqa: E402
from toklip.core.host import PluginHost, use_host  # noqa: E402
from toklip_kernels import _runtime  # noqa: E402


@pytest.fixture(autouse=True)
def kernels_host():
    host = PluginHost(autoload=False, strict=True)
    host.register_plugin(toklip_kernels.plugin, name="kernels", dist="toklip-kernels")
    with use_host(host):
        yield host


@pytest.fixture(autouse=True)
def _poison_and_seed(monkeypatch):
    monkeypatch.setattr(_runtime, "POISON_OUTPUTS", True)
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    """Where the kernels run in this session: CUDA if present, else the CPU interpreter."""
    return torch.device("cuda" if CUDA else "cpu")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not CUDA:
            item.add_marker(skip_gpu)
