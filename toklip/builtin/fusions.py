"""Fusion functions: join low-level code embeddings [B, N, low_dim] and semantic features [B, N, high_dim].

Used to build the inputs of an autoregressive model over image tokens (TokLIP §3.3).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _to(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Identity() if dim_in == dim_out else nn.Linear(dim_in, dim_out)


class SumFusion(nn.Module):
    """low + high, each linearly projected to out_dim when its width differs."""

    def __init__(self, low_dim: int, high_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.out_dim = out_dim or high_dim
        self.low_proj, self.high_proj = _to(low_dim, self.out_dim), _to(high_dim, self.out_dim)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.low_proj(low) + self.high_proj(high)


class WeightedSumFusion(SumFusion):
    """(1 - a) * low + a * high with a = sigmoid(w) learnable, starting at 0.5."""

    def __init__(self, low_dim: int, high_dim: int, out_dim: int | None = None) -> None:
        super().__init__(low_dim, high_dim, out_dim)
        self.weight_logit = nn.Parameter(torch.zeros(()))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight_logit.zero_()

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        a = torch.sigmoid(self.weight_logit)
        return (1 - a) * self.low_proj(low) + a * self.high_proj(high)


class ConcatFusion(nn.Module):
    """Linear(concat(low, high)) -> out_dim."""

    def __init__(self, low_dim: int, high_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.out_dim = out_dim or high_dim
        self.proj = nn.Linear(low_dim + high_dim, self.out_dim)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.proj(torch.cat([low.to(high.dtype), high], dim=-1))
