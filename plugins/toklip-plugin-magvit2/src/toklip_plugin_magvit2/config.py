"""Open-MAGVIT2 architecture settings, and reading them from the official and fixture config formats.

Accepted sources (a path to ``.json``/``.yaml``, or an already-parsed mapping):

- the parity-fixture ``config.json`` (``{"official_init_args": {"ddconfig": ..., "n_embed": ..., ...}}``);
- the official Lightning CLI config (``{"model": {"init_args": {...}}}``, e.g. ``imagenet_lfqgan_256_L.yaml``);
- the official ``init_args`` themselves (``{"ddconfig": ..., "n_embed": ..., "embed_dim": ...}``);
- toklip's flat keyword form (``{"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 4, ...}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toklip import ConfigError

from toklip_plugin_magvit2.lfq import MAX_BITS


@dataclass(frozen=True)
class MagvitArch:
    """Everything that fixes the shapes of an Open-MAGVIT2 tokenizer."""

    ch: int = 128
    ch_mult: tuple[int, ...] = field(default=(1, 1, 2, 2, 4))
    num_res_blocks: int = 4
    z_channels: int = 18  # = embed_dim = bits per code
    in_channels: int = 3
    out_ch: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        for name in ("ch", "num_res_blocks", "z_channels", "in_channels", "out_ch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"Open-MAGVIT2 setting {name} must be a positive integer, got {value!r}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ConfigError(f"Open-MAGVIT2 ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % 32 for w in widths):
            raise ConfigError(
                f"Open-MAGVIT2 level widths ch * ch_mult = {widths} must be multiples of 32 (GroupNorm(32))"
            )
        if self.z_channels > MAX_BITS:
            raise ConfigError(f"LFQ with {self.z_channels} bits does not fit int64 indices (at most {MAX_BITS})")
        if self.in_channels != 3 or self.out_ch != 3:
            raise ConfigError(
                f"toklip tokenizes RGB images: in_channels and out_ch must be 3, got {self.in_channels}, {self.out_ch}"
            )

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_kwargs(self) -> dict[str, Any]:
        """The flat keyword form (JSON-friendly), which rebuilds the same architecture."""
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d


ARCH_KEYS = ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch")


def read_config_source(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Load a config file (JSON, or YAML when PyYAML is installed) or copy a mapping."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"Open-MAGVIT2 config {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in {".yaml", ".yml"}:
        try:
            import yaml
        except ImportError as e:
            raise ConfigError(f"reading {path} needs PyYAML: pip install pyyaml (or pass the config as JSON)") from e
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"Open-MAGVIT2 config {path} is not valid JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise ConfigError(f"Open-MAGVIT2 config {path} must hold a mapping, got {type(data).__name__}")
    return dict(data)


def _init_args(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The official ``VQModel`` init_args inside any accepted layout, or None for the flat form."""
    if isinstance(data.get("official_init_args"), Mapping):
        return data["official_init_args"]
    model = data.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("init_args"), Mapping):
        return model["init_args"]
    if isinstance(data.get("ddconfig"), Mapping):
        return data
    return None


def arch_from_config(source: str | Path | Mapping[str, Any]) -> MagvitArch:
    """Architecture described by a config in any accepted format (see module docstring)."""
    data = read_config_source(source)
    args = _init_args(data)
    if args is None:
        unknown = sorted(set(data) - set(ARCH_KEYS) - {"codebook_size", "embed_dim", "n_embed"})
        if unknown or not data:
            raise ConfigError(
                f"unrecognised Open-MAGVIT2 config (keys {sorted(data)}); expected the fixture format "
                "('official_init_args'), the official Lightning config ('model.init_args'), the official "
                f"init_args ('ddconfig', 'n_embed', 'embed_dim'), or toklip's keys {list(ARCH_KEYS)}"
            )
        flat = dict(data)
        bits = flat.pop("embed_dim", None)
        n_embed = flat.pop("n_embed", flat.pop("codebook_size", None))
    else:
        dd = args["ddconfig"]
        if dd.get("double_z"):
            raise ConfigError("Open-MAGVIT2 with double_z=True is not an LFQ tokenizer; expected double_z: false")
        flat = {k: dd[k] for k in ARCH_KEYS if k in dd}
        bits, n_embed = args.get("embed_dim"), args.get("n_embed")
    try:
        arch = MagvitArch(**flat)
    except TypeError as e:
        raise ConfigError(f"bad Open-MAGVIT2 config: {e}") from e
    if bits is not None and int(bits) != arch.z_channels:
        raise ConfigError(
            f"Open-MAGVIT2 embed_dim ({bits}) must equal z_channels ({arch.z_channels}): LFQ quantises the encoder "
            "output channels directly"
        )
    if n_embed is not None and int(n_embed) != arch.codebook_size:
        raise ConfigError(
            f"Open-MAGVIT2 n_embed ({n_embed}) must be 2**z_channels = {arch.codebook_size} "
            f"(log2(n_embed) = {math.log2(int(n_embed)) if int(n_embed) > 0 else 'undefined'})"
        )
    return arch
