"""Cosmos' 2D encoder and decoder (``cosmos_tokenizer/modules/layers2d.py``), re-implemented.

Parameter names equal the official ones (``encoder.down.0.block.0.conv1.weight``, ``encoder.mid.attn_1.q.weight``,
``decoder.up.2.upsample.conv.weight``, ...), so official weights load strictly. Structure, pinned by the fixture:

- encoder: patcher -> conv_in -> per level ``num_res_blocks`` ResnetBlocks (+ attention where the level's
  resolution is in ``attn_resolutions``) and, on the first ``num_downsamples`` levels, pad(0,1,0,1) + 3x3/2 conv
  -> mid (block, attention, block) -> GN, swish, 3x3 conv_out;
- decoder: conv_in -> mid -> per level, top down, ``num_res_blocks + 1`` ResnetBlocks (+ attention) and nearest
  x2 + 3x3 conv on the last ``num_downsamples`` levels -> GN, swish, conv_out to ``3 * p**2`` -> unpatcher.
"""

from __future__ import annotations

from torch import Tensor, nn

# The taming-style blocks Cosmos shares with LlamaGen (same parameter names, same maths): ResnetBlock
# (GN, swish, conv, GN, swish, conv; 1x1 nin_shortcut when the width changes), single-head AttnBlock,
# Downsample (zero-pad right/bottom, 3x3 stride-2 conv) and Upsample (nearest x2, 3x3 conv).
from toklip.layers import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm, swish

from toklip_plugin_cosmos.config import CosmosArch
from toklip_plugin_cosmos.patching import patchify, unpatchify


class Level(nn.Module):
    """``block`` (ResnetBlocks), ``attn`` (one AttnBlock after each block, or empty) and an optional resampler."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, attention: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels) for j in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(n_blocks)) if attention else nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """images ``[B, 3, H, W]`` -> ``[B, z_channels, H / compression, W / compression]``."""

    def __init__(self, arch: CosmosArch) -> None:
        super().__init__()
        self.patch_size, self.patch_method = arch.patch_size, arch.patch_method
        self.conv_in = nn.Conv2d(arch.in_channels * arch.patch_size**2, arch.channels, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, res = arch.channels, arch.resolution // arch.patch_size
        for i, mult in enumerate(arch.channels_mult):
            block_out = arch.channels * mult
            level = Level(block_in, block_out, arch.num_res_blocks, attention=res in arch.attn_resolutions)
            if i < arch.num_downsamples:
                level.downsample = Downsample(block_out)
                res //= 2
            self.down.append(level)
            block_in = block_out
        self.mid = Mid(block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, arch.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(patchify(x, self.patch_size, self.patch_method))
        for level in self.down:
            x = level(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        x = self.mid(x)
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nn.Module):
    """``[B, z_channels, h, w]`` -> images ``[B, 3, h * compression, w * compression]``."""

    def __init__(self, arch: CosmosArch) -> None:
        super().__init__()
        self.patch_size, self.patch_method = arch.patch_size, arch.patch_method
        levels = len(arch.channels_mult)
        block_in = arch.channels * arch.channels_mult[-1]
        # upstream starts from the lowest resolution as if every level downsampled (a quirk kept for parity)
        res = (arch.resolution // arch.patch_size) // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(arch.z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in)
        up: list[Level] = [None] * levels  # type: ignore[list-item]
        for i in reversed(range(levels)):
            block_out = arch.channels * arch.channels_mult[i]
            level = Level(block_in, block_out, arch.num_res_blocks + 1, attention=res in arch.attn_resolutions)
            if i >= levels - arch.num_downsamples:
                level.upsample = Upsample(block_out)
                res *= 2
            up[i] = level
            block_in = block_out
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, arch.out_channels * arch.patch_size**2, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            x = level(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        x = self.conv_out(swish(self.norm_out(x)))
        return unpatchify(x, self.patch_size, self.patch_method)
