"""The Cosmos discrete image tokenizer (DI8x8 / DI16x16, FSQ) as a toklip VQ component, and its factory.

``images [B, 3, H, W] in [-1, 1] -> encoder -> quant_conv -> latent [B, 6, h, w] -> FSQ -> indices [B, h, w]
(int64, 0..63999) and codes [B, h, w, 6] (float32)``; ``decode(indices) = decoder(post_quant_conv(codes))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from toklip import ConfigError
from toklip.core.protocols import VQEncoding
from toklip.layers import VQTokenizerBase

from toklip_plugin_cosmos.checkpoint import load_cosmos_weights
from toklip_plugin_cosmos.config import ARCH_KEYS, IGNORED_KEYS, CosmosArch, arch_from_config, arch_kwargs
from toklip_plugin_cosmos.fsq import FSQ
from toklip_plugin_cosmos.layers import Decoder, Encoder

_BASE = CosmosArch()
# variant -> (architecture, registry name that carries its published weights)
VARIANTS: dict[str, tuple[CosmosArch, str | None]] = {
    "di8x8": (dataclasses.replace(_BASE, spatial_compression=8), "cosmos-di8x8"),
    "di16x16": (_BASE, "cosmos-di16x16"),
    "di8x8-360p": (dataclasses.replace(_BASE, spatial_compression=8, patch_size=2), "cosmos-di8x8-360p"),
    "di16x16-360p": (dataclasses.replace(_BASE, spatial_compression=16, patch_size=2), "cosmos-di16x16-360p"),
    # tiny, and with one attention level (resolution 32 / patch 4 = 8 -> 4 after one downsample)
    "test": (
        CosmosArch(channels=32, channels_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,), resolution=32,
                   z_channels=32, spatial_compression=8, patch_size=4),
        None,
    ),
}


class CosmosDITokenizer(VQTokenizerBase):
    """Cosmos DI tokenizer (frozen). ``state_dict`` keys equal the official ``encoder.*``, ``quant_conv.*``,
    ``post_quant_conv.*``, ``decoder.*``; FSQ has no weights."""

    def __init__(self, arch: CosmosArch | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.arch = arch if arch is not None else CosmosArch(**kwargs)
        a = self.arch
        self.encoder = Encoder(a)
        self.decoder = Decoder(a)
        self.quant_conv = nn.Conv2d(a.z_channels, a.embedding_dim, 1)
        self.post_quant_conv = nn.Conv2d(a.embedding_dim, a.z_channels, 1)
        self.quantizer = FSQ(a.levels)
        self.code_dim = a.embedding_dim
        self.vocab_size = a.codebook_size
        self.downsample = a.spatial_compression
        self.loaded_from: list[str] = []

    @property
    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (``build_cosmos(**config_kwargs)``)."""
        return self.arch.to_kwargs()

    def _encode(self, images: Tensor) -> VQEncoding:
        latent = self.quant_conv(self.encoder(images))
        indices, codes = self.quantizer.quantize(latent)  # float32 maths whatever the weights' dtype
        return VQEncoding(indices=indices, codes=codes, latent=latent)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.quantizer.indices_to_codes(indices)

    def _decode_codes(self, codes_bchw: Tensor) -> Tensor:
        dtype = self.post_quant_conv.weight.dtype
        return self.decoder(self.post_quant_conv(codes_bchw.to(dtype)))

    def load_checkpoint(self, checkpoint: str | Path | Sequence[str | Path]) -> None:
        """Load released ``.jit`` files (read, never run), a release folder, or state dicts, strictly."""
        self.loaded_from = [str(p) for p in load_cosmos_weights(self, checkpoint)]


def resolve_arch(
    variant: str | None, config: str | Path | Mapping[str, Any] | None, overrides: dict[str, Any]
) -> CosmosArch:
    """Architecture from a named variant, replaced by ``config`` if given, then keyword overrides."""
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"unknown Cosmos DI variant {variant!r}; choose one of {sorted(VARIANTS)}")
    arch = VARIANTS[variant or "di16x16"][0]
    if config is not None:
        arch = arch_from_config(config)
    if overrides:
        unknown = sorted(set(overrides) - set(ARCH_KEYS) - IGNORED_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown Cosmos argument(s) {unknown}; architecture keys are {sorted(ARCH_KEYS)}, plus variant, "
                "config, checkpoint and pretrained"
            )
        arch = dataclasses.replace(arch, **arch_kwargs(overrides))
    return arch


def build_cosmos(
    variant: str | None = "di16x16",
    *,
    config: str | Path | Mapping[str, Any] | None = None,
    checkpoint: str | Path | Sequence[str | Path] | None = None,
    pretrained: bool | str | Path | None = None,
    **overrides: Any,
) -> CosmosDITokenizer:
    """Build a Cosmos DI tokenizer.

    ``variant``: "di8x8", "di16x16" (Cosmos-0.1, patch 4), "di8x8-360p", "di16x16-360p" (Cosmos-Tokenize1,
    patch 2) or "test". ``config`` (fixture ``config.json`` or the official config dict) replaces it; keywords
    with the official config's names (``channels``, ``levels``, ...) override single settings.
    ``checkpoint``: a release folder, ``autoencoder.jit``, ``[encoder.jit, decoder.jit]`` or a state dict.
    ``pretrained``: a local file/folder (the registry resolves a weights tag or True to the variant's release).
    """
    if checkpoint is not None and pretrained not in (None, False):
        raise ConfigError("pass either checkpoint= or pretrained=, not both")
    model = CosmosDITokenizer(resolve_arch(variant, config, overrides))
    source: Any = checkpoint
    if pretrained not in (None, False):
        from toklip.weights import local_weights

        source = local_weights(pretrained, f"Cosmos {variant or 'di16x16'}")
    if source is not None:
        model.load_checkpoint(source)
    model.requires_grad_(False)
    return model.eval()

