"""TokLIPConfig: the JSON description of a composed model (what presets, save_pretrained and convert write).

Components are written as ``{"name": "...", **kwargs}``; a bare string means ``{"name": string}``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toklip.core.errors import ConfigError, close_matches

SCHEMA_VERSION = 1
RESIZE_MODES = ("shortest", "squash")
WEIGHT_KWARGS = ("pretrained", "checkpoint")  # component kwargs naming weight files, not architecture


@dataclass
class ComponentRef:
    """A registry name plus the keyword arguments its factory receives."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, what: str) -> ComponentRef:
        if isinstance(value, ComponentRef):
            return ComponentRef(value.name, copy.deepcopy(value.kwargs))
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            d = dict(value)
            name = d.pop("name", None)
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{what} must have a string 'name', got {value!r}")
            return cls(name, copy.deepcopy(d))
        raise ConfigError(f"{what} must be a name or a {{'name': ..., **kwargs}} mapping, got {type(value).__name__}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.kwargs)}


@dataclass
class TokLIPConfig:
    vq: ComponentRef
    encoder: ComponentRef
    projector: ComponentRef = field(default_factory=lambda: ComponentRef("mlp"))
    attention: str = "causal"
    attn_backend: str = "auto"
    fusion: ComponentRef | None = field(default_factory=lambda: ComponentRef("concat"))
    image_size: int | None = None  # None: encoder patch grid x VQ downsample
    resize_mode: str = "shortest"
    name: str | None = None
    schema_version: int = SCHEMA_VERSION

    FIELDS = ("vq", "encoder", "projector", "attention", "attn_backend", "fusion", "image_size", "resize_mode",
              "name", "schema_version")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokLIPConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a TokLIP config must be a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in cls.FIELDS]
        if unknown:
            hints = {k: close_matches(k, cls.FIELDS, n=1) for k in unknown}
            text = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise ConfigError(f"unknown config key(s) {text}; known keys: {', '.join(cls.FIELDS)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ConfigError(
                f"config schema_version {version!r} is newer than this toklip understands ({SCHEMA_VERSION}); "
                "upgrade toklip"
            )
        for required in ("vq", "encoder"):
            if required not in data:
                raise ConfigError(f"config is missing {required!r}")
        image_size = data.get("image_size")
        if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0):
            raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
        resize_mode = data.get("resize_mode", "shortest")
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        for key in ("attention", "attn_backend"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"{key} must be a name (string), got {data[key]!r}")
        fusion = data.get("fusion", {"name": "concat"})
        return cls(
            vq=ComponentRef.parse(data["vq"], "vq"),
            encoder=ComponentRef.parse(data["encoder"], "encoder"),
            projector=ComponentRef.parse(data.get("projector", "mlp"), "projector"),
            attention=data.get("attention", "causal"),
            attn_backend=data.get("attn_backend", "auto"),
            fusion=None if fusion is None else ComponentRef.parse(fusion, "fusion"),
            image_size=image_size,
            resize_mode=resize_mode,
            name=data.get("name"),
            schema_version=SCHEMA_VERSION,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "vq": self.vq.to_json(),
            "encoder": self.encoder.to_json(),
            "projector": self.projector.to_json(),
            "attention": self.attention,
            "attn_backend": self.attn_backend,
            "fusion": None if self.fusion is None else self.fusion.to_json(),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if path is not None:
            from toklip.core.io import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> TokLIPConfig:
        from toklip.core.io import parse_json, read_json

        text = str(path_or_text)
        if isinstance(path_or_text, Path) or not text.lstrip().startswith("{"):
            return cls.from_dict(read_json(path_or_text, "config"))
        return cls.from_dict(parse_json(text, "config"))

    def without_pretrained(self) -> TokLIPConfig:
        """The same architecture with every component's weight sources (`pretrained`, `checkpoint`) cleared:
        the weights travel separately."""
        cfg = copy.deepcopy(self)
        for ref in (cfg.vq, cfg.encoder, cfg.projector, cfg.fusion):
            if ref is not None:
                for key in WEIGHT_KWARGS:
                    ref.kwargs.pop(key, None)
        return cfg
