"""Cosmos discrete-image (DI) architecture settings and reading them from the official/fixture config formats.

Accepted sources (a JSON path or a mapping): the parity-fixture ``config.json`` (``{"tokenizer_config": {...}}``),
or the official config dict itself (``cosmos_tokenizer.networks.configs.discrete_image`` and the
``discrete_image_*_360p`` variants of cosmos-predict1), whose keys are also this plugin's keyword arguments.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from toklip import ConfigError

# Keys of the official dict that do not change the inference network.
IGNORED_KEYS = {"dropout", "num_quantizers", "z_factor", "name", "formulation", "dtype"}


@dataclass(frozen=True)
class CosmosArch:
    """Everything that fixes the shapes of a Cosmos DI tokenizer (defaults: Cosmos-0.1 DI16x16)."""

    channels: int = 128
    channels_mult: tuple[int, ...] = field(default=(2, 4, 4))
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = field(default=(32,))
    resolution: int = 1024
    patch_size: int = 4
    patch_method: str = "haar"
    z_channels: int = 256
    embedding_dim: int = 6
    levels: tuple[int, ...] = field(default=(8, 8, 8, 5, 5, 5))
    spatial_compression: int = 16
    in_channels: int = 3
    out_channels: int = 3
    quantizer: str = "FSQ"
    encoder: str = "Default"
    decoder: str = "Default"

    def __post_init__(self) -> None:
        for name in ("channels_mult", "attn_resolutions", "levels"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ConfigError(f"Cosmos setting {name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        for name in ("channels", "num_res_blocks", "resolution", "patch_size", "z_channels", "embedding_dim",
                     "spatial_compression", "in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"Cosmos setting {name} must be a positive integer, got {value!r}")
        if self.quantizer != "FSQ":
            raise ConfigError(
                f"quantizer {self.quantizer!r} is not supported: the Cosmos discrete image tokenizers use 'FSQ'"
            )
        if self.encoder != "Default" or self.decoder != "Default":
            raise ConfigError(
                f"only the 'Default' Cosmos encoder/decoder exist here, got {self.encoder!r}/{self.decoder!r}"
            )
        if self.patch_method not in ("haar", "rearrange"):
            raise ConfigError(f"patch_method must be 'haar' or 'rearrange', got {self.patch_method!r}")
        if not self.levels or any(x < 2 for x in self.levels):
            raise ConfigError(f"FSQ levels must be integers >= 2, got {list(self.levels)}")
        if self.embedding_dim != len(self.levels):
            raise ConfigError(
                f"embedding_dim ({self.embedding_dim}) must equal len(levels) ({len(self.levels)}), as in every "
                "Cosmos DI release (FSQ without projections)"
            )
        if not self.channels_mult or any(m <= 0 for m in self.channels_mult):
            raise ConfigError(
                f"channels_mult must be a non-empty list of positive ints, got {list(self.channels_mult)}"
            )
        widths = [self.channels * m for m in (1, *self.channels_mult)]
        if any(w % 32 for w in widths):
            raise ConfigError(f"channel widths {widths} must be multiples of 32 (GroupNorm with 32 groups)")
        for name in ("patch_size", "spatial_compression"):
            value = getattr(self, name)
            if 2 ** int(math.log2(value)) != value:
                raise ConfigError(f"{name} must be a power of two, got {value}")
        if not 0 <= self.num_downsamples <= len(self.channels_mult):
            raise ConfigError(
                f"spatial_compression {self.spatial_compression} with patch_size {self.patch_size} needs "
                f"{self.num_downsamples} downsamples, but channels_mult has {len(self.channels_mult)} levels"
            )
        if self.in_channels != 3 or self.out_channels != 3:
            raise ConfigError("toklip tokenizes RGB images: in_channels and out_channels must be 3")

    @property
    def num_downsamples(self) -> int:
        return int(math.log2(self.spatial_compression)) - int(math.log2(self.patch_size))

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_kwargs(self) -> dict[str, Any]:
        """The official-dict keyword form (JSON-friendly), which rebuilds the same architecture."""
        d = asdict(self)
        for name in ("channels_mult", "attn_resolutions", "levels"):
            d[name] = list(d[name])
        return d


ARCH_KEYS = tuple(f.name for f in fields(CosmosArch))


def arch_kwargs(data: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture keywords from an official config dict; unknown keys are an error (typos never pass)."""
    unknown = sorted(set(data) - set(ARCH_KEYS) - IGNORED_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown Cosmos DI config key(s) {unknown}; expected the keys of the official discrete_image config: "
            f"{sorted(ARCH_KEYS)}"
        )
    return {k: v for k, v in data.items() if k in ARCH_KEYS}


def arch_from_config(source: str | Path | Mapping[str, Any]) -> CosmosArch:
    """Architecture described by a fixture-format config.json, an official config dict, or a mapping."""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"Cosmos config {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"Cosmos config {path} is not valid JSON: {e}") from e
        if not isinstance(data, Mapping):
            raise ConfigError(f"Cosmos config {path} must hold a JSON object")
    if isinstance(data.get("tokenizer_config"), Mapping):
        data = dict(data["tokenizer_config"])
    if not data:
        raise ConfigError("empty Cosmos config")
    try:
        return CosmosArch(**arch_kwargs(data))
    except TypeError as e:  # pragma: no cover - arch_kwargs filters keys already
        raise ConfigError(f"bad Cosmos config: {e}") from e
