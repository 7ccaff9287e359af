"""Lookup-free quantisation (LFQ) as Open-MAGVIT2 uses it: every latent channel becomes one bit.

The rules (checked against the official ``LFQ`` module by the parity fixture):

- code: ``+1`` where the latent is ``> 0``, else ``-1`` (exactly 0 gives -1); no projection, no scaling;
- index: ``sum_d bit_d * 2**d`` with ``d`` the channel index, so channel 0 is the least-significant bit
  (the upstream docstring says "big endian"; the code is LSB-first);
- inverse: ``bit_d = (index >> d) & 1``, ``code_d = 2 * bit_d - 1``.

LFQ has no weights, so all of this is exact and cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor

# int64 indices hold at most 62 bits without touching the sign bit (and `1 << 63` overflows).
MAX_BITS = 62


def _bit_weights(bits: int, device: torch.device) -> Tensor:
    return torch.pow(2, torch.arange(bits, device=device, dtype=torch.int64))


def quantize(latent: Tensor) -> tuple[Tensor, Tensor]:
    """latent ``[B, D, h, w]`` -> (indices ``[B, h, w]`` int64, codes ``[B, h, w, D]`` float32 in {-1, +1})."""
    positive = latent.permute(0, 2, 3, 1) > 0
    codes = torch.where(positive, 1.0, -1.0).to(torch.float32)
    indices = (positive.to(torch.int64) * _bit_weights(latent.shape[1], latent.device)).sum(dim=-1)
    return indices, codes


def indices_to_codes(indices: Tensor, bits: int) -> Tensor:
    """indices ``[...]`` (any integer dtype) -> codes ``[..., bits]`` float32 in {-1, +1}."""
    weights = _bit_weights(bits, indices.device)
    on = (indices.to(torch.int64).unsqueeze(-1) & weights) != 0
    return on.to(torch.float32) * 2 - 1


def factorize(indices: Tensor, split: int) -> tuple[Tensor, Tensor]:
    """Split indices into the two sub-tokens Open-MAGVIT2's AR stage predicts (``factorized_bits``).

    ``pre`` holds channels ``0 .. split-1`` and ``post`` the rest, each LSB first, so that
    ``index == pre + post * 2**split``.
    """
    indices = indices.to(torch.int64)
    return indices & ((1 << split) - 1), indices >> split


def unfactorize(pre: Tensor, post: Tensor, split: int) -> Tensor:
    """Inverse of :func:`factorize`."""
    return pre.to(torch.int64) + (post.to(torch.int64) << split)
