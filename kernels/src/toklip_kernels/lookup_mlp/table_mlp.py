"""The MLP over the V codebook rows, forward and backward, for the codebook-space strategy.

Two implementations of the same math:
- ``triton``: the fused per-token kernels run over the codebook rows (the 4D hidden layer never leaves
  registers; it is recomputed for each D block).
- ``torch``: cuBLAS GEMMs with the [V, 4D] hidden layer materialised (151 MB in bf16 at TokLIP size).
Which is faster on a given GPU is measured by benchmarks/bench_lookup_mlp.py (providers
``triton-codebook`` and ``triton-codebook-fused``); ``DEFAULT`` follows that measurement.

Backward input: dT [V, D], the per-code sum of dOut. Outputs are float32 (dW1, db1, dW2, db2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from toklip import ConfigError
from toklip_kernels.lookup_mlp import launch

IMPLS = ("torch", "triton")
# cuBLAS GEMMs at ~0.5 TFLOP of work beat a fused kernel that recomputes erf GELU per D block (an estimate:
# no GPU measurement yet, see benchmarks/README.md).
DEFAULT = "torch"


def resolve(impl: str | None) -> str:
    impl = impl or DEFAULT
    if impl not in IMPLS:
        raise ConfigError(f"unknown table implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    return impl


def forward(table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, impl: str) -> Tensor:
    """[V, D] = MLP(table) in the weights' dtype (all inputs already in the compute dtype)."""
    if impl == "triton":
        return launch.mlp_forward(None, table, w1, b1, w2, b2, pos=None, out_dtype=w1.dtype)
    return F.linear(F.gelu(F.linear(table, w1, b1)), w2, b2)


def _gelu_grad(x: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    return cdf + x * torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


def backward(table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, dtab: Tensor, impl: str
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Float32 (dW1, db1, dW2, db2) of sum(MLP(table) * dtab); dtab [V, D] in the compute dtype."""
    if impl == "triton":
        return launch.mlp_backward(None, table, w1, b1, w2, dtab)
    pre = F.linear(table, w1, b1)  # recomputed: K = c is tiny
    hid = F.gelu(pre)
    dw2 = (dtab.t() @ hid).float()
    db2 = dtab.float().sum(0)
    dpre = (dtab @ w2).float() * _gelu_grad(pre.float())
    dw1 = dpre.t() @ table.float()
    db1 = dpre.sum(0)
    return dw1, db1, dw2, db2
