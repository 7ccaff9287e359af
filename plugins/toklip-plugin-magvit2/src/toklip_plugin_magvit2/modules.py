"""Open-MAGVIT2's convolutional encoder and decoder (``improved_model.py``), re-implemented.

Parameter names equal the official ones key for key (``encoder.down.0.block.0.conv1.weight``, ...), so
official state dicts load strictly. Details that are easy to get wrong, all pinned by the parity fixture:

- no attention anywhere; every ResBlock conv (and the 1x1 ``nin_shortcut``) has no bias;
- the encoder downsamples with a strided 3x3 conv (symmetric padding 1, with bias) after every level but
  the last, and ends with a **1x1** ``conv_out`` straight to the code dimension (no ``quant_conv``);
- the decoder conditions every level on the code map through :class:`AdaptiveGroupNorm`, which uses the
  **unbiased** variance over positions, and upsamples with a conv to 4C plus depth-to-space in DCR order
  (not ``F.pixel_shuffle``'s CRD order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

GROUPS = 32
EPS = 1e-6


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int, *, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=EPS, affine=affine)


class ResBlock(nn.Module):
    """``x + conv2(swish(GN(conv1(swish(GN(x))))))``; a bias-free 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


def depth_to_space_dcr(x: Tensor, block: int = 2) -> Tensor:
    """``out[b, c, y*s+i, x*s+j] = in[b, (i*s + j)*C + c, y, x]`` (depth-column-row order)."""
    b, c, h, w = x.shape
    out_c = c // (block * block)
    x = x.view(b, block, block, out_c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, out_c, h * block, w * block)


class Upsampler(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return depth_to_space_dcr(self.conv1(x))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, scaled by ``gamma(std(codes))`` and shifted by ``beta(mean(codes))``.

    ``codes`` is the decoder's input code map ``[B, D, h, w]``; its per-channel statistics over the h*w
    positions use the unbiased variance, as ``Tensor.var`` does upstream.
    """

    def __init__(self, code_dim: int, channels: int) -> None:
        super().__init__()
        self.gn = group_norm(channels, affine=False)
        self.gamma = nn.Linear(code_dim, channels)
        self.beta = nn.Linear(code_dim, channels)

    def forward(self, x: Tensor, codes: Tensor) -> Tensor:
        b, c = x.shape[:2]
        flat = codes.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + EPS).sqrt()).view(b, c, 1, 1)
        bias = self.beta(flat.mean(dim=-1)).view(b, c, 1, 1)
        return self.gn(x) * scale + bias


class Level(nn.Module):
    """One resolution level: ``block`` (ResBlocks) and an optional resampler under ``downsample``/``upsample``."""

    def __init__(self, blocks: Sequence[ResBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


def _check_channels(ch: int, ch_mult: Sequence[int]) -> None:
    if ch <= 0 or not ch_mult or any(m <= 0 for m in ch_mult):
        raise ValueError(f"ch and ch_mult must be positive, got ch={ch}, ch_mult={list(ch_mult)}")
    bad = [ch * m for m in ch_mult if (ch * m) % GROUPS]
    if bad:
        raise ValueError(
            f"every level width ch * ch_mult must be a multiple of {GROUPS} (GroupNorm groups); got widths "
            f"{[ch * m for m in ch_mult]} for ch={ch}, ch_mult={list(ch_mult)}"
        )


class Encoder(nn.Module):
    """images ``[B, 3, H, W]`` -> latent ``[B, z_channels, H/2^(L-1), W/2^(L-1)]``."""

    def __init__(
        self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        _check_channels(ch, ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        widths = [ch * m for m in ch_mult]
        self.down = nn.ModuleList()
        block_in = ch
        for i, block_out in enumerate(widths):
            level = Level([ResBlock(block_in if j == 0 else block_out, block_out) for j in range(num_res_blocks)])
            if i < len(widths) - 1:
                level.downsample = nn.Conv2d(block_out, block_out, 3, stride=2, padding=1)
            self.down.append(level)
            block_in = block_out
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in) for _ in range(num_res_blocks))
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nn.Module):
    """code map ``[B, z_channels, h, w]`` (values +-1) -> images ``[B, out_ch, h*2^(L-1), w*2^(L-1)]``."""

    def __init__(
        self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, out_ch: int = 3
    ) -> None:
        super().__init__()
        _check_channels(ch, ch_mult)
        levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(block_in, block_in) for _ in range(num_res_blocks))
        up: list[Level] = [None] * levels  # type: ignore[list-item]
        adaptive: list[AdaptiveGroupNorm] = [None] * levels  # type: ignore[list-item]
        for i in reversed(range(levels)):  # indexed by level, built top-down
            block_out = ch * ch_mult[i]
            adaptive[i] = AdaptiveGroupNorm(z_channels, block_in)
            level = Level([ResBlock(block_in if j == 0 else block_out, block_out) for j in range(num_res_blocks)])
            if i > 0:
                level.upsample = Upsampler(block_out)
            up[i] = level
            block_in = block_out
        self.up = nn.ModuleList(up)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, codes: Tensor) -> Tensor:
        x = self.conv_in(codes)
        for block in self.mid_block:
            x = block(x)
        for i in reversed(range(len(self.up))):
            x = self.adaptive[i](x, codes)
            level = self.up[i]
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(swish(self.norm_out(x)))
