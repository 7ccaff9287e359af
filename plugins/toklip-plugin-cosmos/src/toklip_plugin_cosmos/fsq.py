"""Finite scalar quantisation (FSQ) exactly as Cosmos' ``FSQuantizer`` does it, without its dtype trap.

Per channel d with L = levels[d] (all arithmetic in float32, as upstream):

- ``half_l = (L - 1) * (1 + 1e-3) / 2``, ``offset = 0.5 if L is even else 0``, ``shift = atanh(offset / half_l)``;
- ``bound(z) = tanh(z + shift) * half_l - offset``; ``digit = round(bound) + L // 2`` lies in ``[0, L - 1]``;
- ``code = (digit - L // 2) / (L // 2)``, e.g. L=8 gives {-1, -0.75, ..., 0.75}, L=5 gives {-1, -0.5, 0, 0.5, 1};
- ``index = sum_d digit_d * basis_d`` with ``basis = cumprod([1] + levels[:-1])``: a mixed radix in which
  channel 0 is the least-significant digit. ``[8, 8, 8, 5, 5, 5]`` gives 64000 codes, indices 0..63999.

Upstream returns codes in ``FSQuantizer.dtype``, which defaults to bfloat16 and is reset to bfloat16 by
``model.to(...)``; here codes are always float32 (every code value is exact in both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

EPS = 1e-3


class FSQ(nn.Module):
    """Stateless FSQ with ``len(levels)`` channels (no projections: Cosmos DI has embedding_dim == len(levels))."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(int(x) for x in levels)
        if not self.levels or any(x < 2 for x in self.levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {list(levels)}")
        self.codebook_size = math.prod(self.levels)
        self.basis = tuple(math.prod(self.levels[:i]) for i in range(len(self.levels)))

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, codebook_size={self.codebook_size}"

    def _consts(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        levels = torch.tensor(self.levels, dtype=torch.int32, device=device)
        half_width = levels // 2
        basis = torch.tensor(self.basis, dtype=torch.int64, device=device)
        return levels, half_width, basis

    def bound(self, z: Tensor) -> Tensor:
        """``z [..., d]`` float32 -> values in ``(-L/2, L/2)`` whose rounding gives the digit offset."""
        levels, _, _ = self._consts(z.device)
        half_l = (levels - 1) * (1 + EPS) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        return (z + shift).tanh() * half_l - offset

    def quantize(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """latent ``[B, d, h, w]`` -> (indices ``[B, h, w]`` int64, codes ``[B, h, w, d]`` float32)."""
        z = latent.permute(0, 2, 3, 1).float()
        _, half_width, basis = self._consts(z.device)
        rounded = torch.round(self.bound(z))
        codes = rounded / half_width
        digits = rounded.to(torch.int64) + half_width.to(torch.int64)
        return (digits * basis).sum(dim=-1), codes

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices ``[...]`` (any integer dtype) -> codes ``[..., d]`` float32."""
        levels, half_width, basis = self._consts(indices.device)
        digits = (indices.to(torch.int64).unsqueeze(-1) // basis) % levels
        return ((digits - half_width) / half_width).to(torch.float32)
