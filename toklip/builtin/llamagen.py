"""LlamaGen VQGAN (FoundationVision/LlamaGen ``tokenizer/tokenizer_image/vq_model.py``), re-implemented.

No maintained package ships it (the PyPI name ``llamagen`` is an empty placeholder), so this is a clean
implementation whose ``state_dict`` keys equal the official ones key for key, and which loads LlamaGen
release files (``{'model': ...}``, ``{'ema': ...}`` or ``{'state_dict': ...}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.protocols import VQEncoding
from toklip.layers import VQTokenizerBase
from toklip.layers.conv import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm, swish  # noqa: F401

VARIANTS = {"VQ-16": [1, 1, 2, 2, 4], "VQ-8": [1, 2, 2, 4]}
USAGE_BUFFER = 65536  # LlamaGen keeps a 65536-entry `codebook_used` buffer; unused at inference


class Level(nn.Module):
    """One resolution level: `res` blocks, optional `attn` blocks after each, optional resampler."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attn: bool, resample: nn.Module | None, name: str):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(n_blocks)) if attn else nn.ModuleList()
        if resample is not None:
            self.add_module(name, resample)
        self._resample_name = name if resample is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self._resample_name is not None:
            x = getattr(self, self._resample_name)(x)
        return x


def mid_blocks(channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)])


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        chans = [ch * m for m in ch_mult]
        last = len(chans) - 1
        self.conv_blocks = nn.ModuleList(
            Level(
                ch if i == 0 else chans[i - 1], c, num_res_blocks, attn=i == last,
                resample=Downsample(c) if i != last else None, name="downsample",
            )
            for i, c in enumerate(chans)
        )
        self.mid = mid_blocks(chans[-1])
        self.norm_out = group_norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        chans = [ch * m for m in reversed(ch_mult)]  # lowest resolution first
        self.conv_in = nn.Conv2d(z_channels, chans[0], 3, padding=1)
        self.mid = mid_blocks(chans[0])
        last = len(chans) - 1
        self.conv_blocks = nn.ModuleList(
            Level(
                chans[0] if i == 0 else chans[i - 1], c, num_res_blocks + 1, attn=i == 0,
                resample=Upsample(c) if i != last else None, name="upsample",
            )
            for i, c in enumerate(chans)
        )
        self.norm_out = group_norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest l2-normalised codebook row to the l2-normalised latent (cosine argmax)."""

    def __init__(self, codebook_size: int, codebook_embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("codebook_used", torch.zeros(USAGE_BUFFER))

    def normalized_codebook(self) -> Tensor:
        return F.normalize(self.embedding.weight, dim=-1)

    def forward(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """latent [B, c, h, w] -> (indices [B, h, w], codes [B, h, w, c])."""
        z = F.normalize(latent.permute(0, 2, 3, 1), dim=-1)
        e = self.normalized_codebook().to(z.dtype)
        flat = z.reshape(-1, z.shape[-1])
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        indices = dist.argmin(dim=1).reshape(z.shape[:-1])
        codes = z + (e[indices] - z).detach()  # straight-through value, as the official quantizer returns
        return indices, codes


class LlamaGenVQ(VQTokenizerBase):
    """LlamaGen VQ model: ``encode`` images -> indices + l2-normalised code vectors, ``decode`` indices -> images."""

    def __init__(
        self,
        *,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 16384,
        codebook_embed_dim: int = 8,
    ) -> None:
        super().__init__()
        if ch % 32:
            raise ValueError(f"LlamaGen needs ch divisible by 32 (GroupNorm with 32 groups), got {ch}")
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim)
        self.code_dim = codebook_embed_dim
        self.vocab_size = codebook_size
        self.downsample = 2 ** (len(ch_mult) - 1)

    def _encode(self, images: Tensor) -> VQEncoding:
        latent = self.quant_conv(self.encoder(images))
        indices, codes = self.quantize(latent)
        return VQEncoding(indices=indices, codes=codes, latent=latent)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.quantize.normalized_codebook()[indices]

    def _decode_codes(self, codes_bchw: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(codes_bchw))

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a LlamaGen release file (``ema`` preferred, then ``model``, then ``state_dict``), strictly."""
        from toklip.weights import load_state_dict_strict, read_checkpoint

        obj = read_checkpoint(path)
        sd = obj
        for key in ("ema", "model", "state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                sd = obj[key]
                break
        load_state_dict_strict(self, sd, source=str(path))


def build_llamagen(
    variant: str | None = None,
    pretrained: bool | str | None = None,
    **kwargs: object,
) -> LlamaGenVQ:
    """Build a LlamaGen VQ. ``variant`` picks the official channel multipliers ("VQ-16" or "VQ-8");
    explicit ``ch``, ``ch_mult``, ``z_channels``, ``codebook_size``, ... override it (any fixture size works).
    ``pretrained`` is a local file (the registry resolves release tags "t2i"/"c2i" and True to files first)."""
    if variant is not None:
        if variant not in VARIANTS:
            from toklip.core.errors import ConfigError

            raise ConfigError(f"unknown LlamaGen variant {variant!r}; choose one of {sorted(VARIANTS)}")
        kwargs.setdefault("ch_mult", VARIANTS[variant])
    model = LlamaGenVQ(**kwargs)  # type: ignore[arg-type]
    if pretrained:
        from toklip.weights import local_weights

        model.load_checkpoint(local_weights(pretrained, f"LlamaGen {variant or 'VQ'}"))
    model.requires_grad_(False)
    return model
