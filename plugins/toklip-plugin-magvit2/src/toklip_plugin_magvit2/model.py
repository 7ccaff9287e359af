"""The Open-MAGVIT2 tokenizer as a toklip VQ component, and its factory.

``images [B, 3, H, W] in [-1, 1] -> encoder -> latent [B, D, h, w] -> LFQ -> indices [B, h, w] (int64) and
codes [B, h, w, D] (exactly +-1, float32)``; ``decode(indices)`` rebuilds the +-1 code map and runs the decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from toklip import ConfigError, InputError
from toklip.core.protocols import VQEncoding
from toklip.layers import VQTokenizerBase

from toklip_plugin_magvit2 import lfq
from toklip_plugin_magvit2.checkpoint import Weights, load_magvit2_checkpoint
from toklip_plugin_magvit2.config import ARCH_KEYS, MagvitArch, arch_from_config
from toklip_plugin_magvit2.modules import Decoder, Encoder

# variant -> (architecture, registry name that carries its published weights)
VARIANTS: dict[str, tuple[MagvitArch, str | None]] = {
    "imagenet-256": (MagvitArch(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4, z_channels=18), "magvit2"),
    "imagenet-128": (MagvitArch(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=4, z_channels=18), "magvit2-128"),
    "pretrain-16384": (
        MagvitArch(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4, z_channels=14), "magvit2-pretrain-16384"
    ),
    "pretrain-262144": (
        MagvitArch(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4, z_channels=18), "magvit2-pretrain-262144"
    ),
    "test": (MagvitArch(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=10), None),
}


class Magvit2Tokenizer(VQTokenizerBase):
    """Open-MAGVIT2 LFQ tokenizer (frozen). ``state_dict`` keys equal the official ``encoder.*``/``decoder.*``."""

    def __init__(self, arch: MagvitArch | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.arch = arch if arch is not None else MagvitArch(**kwargs)
        a = self.arch
        self.encoder = Encoder(ch=a.ch, ch_mult=a.ch_mult, num_res_blocks=a.num_res_blocks, z_channels=a.z_channels)
        self.decoder = Decoder(ch=a.ch, ch_mult=a.ch_mult, num_res_blocks=a.num_res_blocks, z_channels=a.z_channels)
        self.code_dim = a.z_channels
        self.vocab_size = a.codebook_size
        self.downsample = a.downsample
        self.loaded_weights: str | None = None  # "ema" / "raw" once a checkpoint is loaded

    @property
    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (``build_magvit2(**config_kwargs)``)."""
        return self.arch.to_kwargs()

    def _encode(self, images: Tensor) -> VQEncoding:
        latent = self.encoder(images)
        indices, codes = lfq.quantize(latent)
        return VQEncoding(indices=indices, codes=codes, latent=latent)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices ``[...]`` -> +-1 codes ``[..., D]`` (float32): bit d of the index is channel d."""
        return lfq.indices_to_codes(indices, self.code_dim)

    def _decode_codes(self, codes_bchw: Tensor) -> Tensor:
        h, w = codes_bchw.shape[-2:]
        if h * w < 2:
            raise InputError(
                f"Open-MAGVIT2 cannot decode a {h}x{w} token grid: its adaptive group norm takes the (unbiased) "
                "variance of the codes over positions, which needs at least 2 tokens (the official code gives NaN)"
            )
        dtype = self.decoder.conv_in.weight.dtype
        return self.decoder(codes_bchw.to(dtype))

    def factorize_indices(self, indices: Tensor, split: int | None = None) -> tuple[Tensor, Tensor]:
        """The two sub-tokens of Open-MAGVIT2's AR stage: bits ``< split`` and ``>= split`` (default D/2)."""
        split = self.code_dim // 2 if split is None else split
        if not 0 < split < self.code_dim:
            raise InputError(f"split must lie in 1..{self.code_dim - 1} for {self.code_dim}-bit codes, got {split}")
        return lfq.factorize(indices, split)

    def load_checkpoint(self, path: str | Path, *, weights: Weights = "auto") -> str:
        """Load an official ``.ckpt`` (EMA weights by default), a state dict or safetensors, strictly."""
        self.loaded_weights = load_magvit2_checkpoint(self, path, weights=weights)
        return self.loaded_weights


def resolve_arch(
    variant: str | None, config: str | Path | Mapping[str, Any] | None, overrides: dict[str, Any]
) -> MagvitArch:
    """Architecture from a named variant, replaced by ``config`` if given, then keyword overrides."""
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown Open-MAGVIT2 variant {variant!r}; choose one of {sorted(VARIANTS)}")
    arch = VARIANTS[variant or "imagenet-256"][0]
    if config is not None:
        arch = arch_from_config(config)
    unknown = sorted(set(overrides) - set(ARCH_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown Open-MAGVIT2 argument(s) {unknown}; architecture keys are {list(ARCH_KEYS)}, plus "
            "variant, config, checkpoint, pretrained and weights"
        )
    if overrides:
        arch = dataclasses.replace(arch, **overrides)
    return arch


def build_magvit2(
    variant: str | None = "imagenet-256",
    *,
    config: str | Path | Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool | str | Path | None = None,
    weights: Weights = "auto",
    **overrides: Any,
) -> Magvit2Tokenizer:
    """Build an Open-MAGVIT2 tokenizer.

    ``variant`` picks an official architecture ("imagenet-256", "imagenet-128", "pretrain-16384",
    "pretrain-262144", "test"); ``config`` (a fixture/official config file or mapping) replaces it, and
    architecture keywords (``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``) override single settings.
    ``checkpoint`` is a local release file; ``pretrained`` is a local file, a weights tag or True (the
    variant's published weights, fetched from the Hugging Face hub). ``weights`` picks "ema" (what official
    inference uses; the default when present) or "raw" training weights.
    """
    if checkpoint is not None and pretrained not in (None, False):
        raise ConfigError("pass either checkpoint= or pretrained=, not both")
    model = Magvit2Tokenizer(resolve_arch(variant, config, overrides))
    path: str | Path | None = checkpoint
    if pretrained not in (None, False):
        from toklip.weights import local_weights

        path = local_weights(pretrained, f"Open-MAGVIT2 {variant or 'imagenet-256'}")
    if path is not None:
        model.load_checkpoint(path, weights=weights)
    model.requires_grad_(False)
    return model.eval()

