"""Cosmos' parameter-free patcher: a Haar wavelet transform (or a plain space-to-depth) before the encoder,
and its exact inverse after the decoder.

One Haar level maps each 2x2 block ``a b / c d`` of every channel to four bands, each rescaled by 1/2:
``LL = (a+b+c+d)/4, LH = ((a+b)-(c+d))/4, HL = ((a-b)+(c-d))/4, HH = ((a-b)-(c-d))/4``, concatenated as
``[LL (all C), LH (all C), HL (all C), HH (all C)]``. It is applied log2(patch_size) times, so 3 channels become
``3 * patch_size**2``. The arithmetic follows upstream's order (taps of 1/sqrt(2) along width, then height, then
/2), which keeps results within float32 rounding of the official strided convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

TAP = 0.7071067811865476  # 1/sqrt(2), the Haar filter tap


def haar_level(x: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (one wavelet level, rescaled)."""
    r = torch.tensor(TAP, dtype=x.dtype, device=x.device)
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    lo_top, hi_top = a * r + b * r, a * r - b * r  # along width
    lo_bot, hi_bot = c * r + d * r, c * r - d * r
    bands = [
        lo_top * r + lo_bot * r,  # LL
        lo_top * r - lo_bot * r,  # LH
        hi_top * r + hi_bot * r,  # HL
        hi_top * r - hi_bot * r,  # HH
    ]
    return torch.cat(bands, dim=1) / 2


def inverse_haar_level(x: Tensor) -> Tensor:
    """``[B, 4C, h, w] -> [B, C, 2h, 2w]``, the exact inverse of :func:`haar_level`."""
    r = torch.tensor(TAP, dtype=x.dtype, device=x.device)
    ll, lh, hl, hh = torch.chunk(x, 4, dim=1)
    lo_top, lo_bot = ll * r + lh * r, ll * r - lh * r  # along height
    hi_top, hi_bot = hl * r + hh * r, hl * r - hh * r
    top_left, top_right = lo_top * r + hi_top * r, lo_top * r - hi_top * r  # along width
    bot_left, bot_right = lo_bot * r + hi_bot * r, lo_bot * r - hi_bot * r
    b, c, h, w = ll.shape
    top = torch.stack([top_left, top_right], dim=-1).reshape(b, c, h, 2 * w)
    bot = torch.stack([bot_left, bot_right], dim=-1).reshape(b, c, h, 2 * w)
    return torch.stack([top, bot], dim=-2).reshape(b, c, 2 * h, 2 * w) * 2


def _levels(patch_size: int) -> int:
    n = int(math.log2(patch_size)) if patch_size > 0 else -1
    if patch_size < 1 or 2**n != patch_size:
        raise ValueError(f"patch_size must be a power of two, got {patch_size}")
    return n


def patchify(x: Tensor, patch_size: int, method: str) -> Tensor:
    """``[B, C, H, W] -> [B, C * p*p, H/p, W/p]`` with the Haar transform or space-to-depth ("rearrange")."""
    if method == "haar":
        for _ in range(_levels(patch_size)):
            x = haar_level(x)
        return x
    if method == "rearrange":
        return F.pixel_unshuffle(x, patch_size) if patch_size > 1 else x
    raise ValueError(f"unknown patch_method {method!r}; Cosmos uses 'haar' or 'rearrange'")


def unpatchify(x: Tensor, patch_size: int, method: str) -> Tensor:
    """Inverse of :func:`patchify`."""
    if method == "haar":
        for _ in range(_levels(patch_size)):
            x = inverse_haar_level(x)
        return x
    if method == "rearrange":
        return F.pixel_shuffle(x, patch_size) if patch_size > 1 else x
    raise ValueError(f"unknown patch_method {method!r}; Cosmos uses 'haar' or 'rearrange'")
