"""Kernel test setup: toklip's test kit (an isolated plugin host with toklip's builtins and this package's plugin,
seeds, offline hub, GPU skips), the Triton interpreter without a GPU, and NaN-poisoned outputs.

Without a CUDA GPU the kernels run in the Triton interpreter: ``TRITON_INTERPRET=1`` must be set before
triton is imported (Triton picks interpreted vs compiled at ``@triton.jit`` time), so it is set here, at
conftest import, before anything imports toklip_kernels' kernel modules. With a GPU the same tests run the
compiled kernels on CUDA tensors, and the ``gpu`` tests run too. Outputs are poisoned with NaN, so an element a
kernel forgets to write fails the test.
"""

from __future__ import annotations

import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from toklip_kernels import _runtime  # noqa: E402

pytest_plugins = ["toklip.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(_runtime, "POISON_OUTPUTS", True)


@pytest.fixture
def device() -> torch.device:
    """Where the kernels run in this session: CUDA if present, else the CPU interpreter."""
    return torch.device("cuda" if CUDA else "cpu")
