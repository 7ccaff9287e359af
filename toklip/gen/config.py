"""GPTConfig: the LlamaGen ``ModelArgs`` fields, validated, plus the named sizes (B, L, XL, XXL, 3B, test).

Torch-free on purpose, so configs can be listed, read and checked without importing the model code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from toklip.core.errors import ConfigError, close_matches

MODEL_TYPES = ("c2i", "t2i")
# LlamaGen ModelArgs fields that only size the official (buggy) cache; accepted in configs and ignored.
IGNORED_OFFICIAL_FIELDS = frozenset({"max_batch_size", "max_seq_len"})
# A config file may describe a model of any size, but not one no machine could hold: configs come from files,
# and building (even on the meta device) must never allocate or loop without bound because of one.
MAX_TABLE_ELEMENTS = 1 << 34
LIMITS = {"dim": 1 << 16, "n_layer": 1024, "n_head": 1024, "vocab_size": 1 << 24, "num_classes": 1 << 24,
          "caption_dim": 1 << 16, "cls_token_num": 4096, "block_size": 1 << 16, "multiple_of": 1 << 16}


@dataclass(frozen=True)
class GPTConfig:
    """One LlamaGen GPT. Field names and defaults follow LlamaGen's ``ModelArgs`` (dropouts are the training
    defaults; they do nothing in eval mode). ``block_size`` is the number of image tokens, a square grid."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256

    def __post_init__(self) -> None:
        def need(ok: bool, problem: str) -> None:
            if not ok:
                raise ConfigError(f"invalid GPT config: {problem}")

        for name in ("dim", "n_layer", "n_head", "multiple_of", "vocab_size", "cls_token_num", "block_size",
                     "num_classes", "caption_dim"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer, got {value!r}")
            need(value <= LIMITS[name], f"{name} {value} is over the limit {LIMITS[name]}")
        need(self.model_type in MODEL_TYPES, f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        need(self.dim % self.n_head == 0, f"dim {self.dim} is not divisible by n_head {self.n_head}")
        need(self.head_dim % 4 == 0,
             f"head_dim {self.head_dim} (dim / n_head) must be a multiple of 4: the 2-D RoPE rotates pairs in "
             "two halves (rows, columns)")
        kv = self.kv_heads
        need(isinstance(kv, int) and 0 < kv <= self.n_head and self.n_head % kv == 0,
             f"n_kv_head {self.n_kv_head!r} must divide n_head {self.n_head}")
        grid = math.isqrt(self.block_size)
        need(grid * grid == self.block_size,
             f"block_size {self.block_size} is not a square number of image tokens (grid x grid)")
        if self.model_type == "c2i":
            need(self.cls_token_num == 1, f"a c2i model has one condition token, got cls_token_num {self.cls_token_num}")
        for name in ("token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "drop_path_rate",
                     "class_dropout_prob"):
            p = getattr(self, name)
            need(isinstance(p, (int, float)) and 0.0 <= p < 1.0, f"{name} must be in [0, 1), got {p!r}")
        need(isinstance(self.rope_base, (int, float)) and self.rope_base > 1, f"rope_base must be > 1, got {self.rope_base!r}")
        need(isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.ffn_dim_multiplier is not None:
            need(isinstance(self.ffn_dim_multiplier, (int, float)) and self.ffn_dim_multiplier > 0,
                 f"ffn_dim_multiplier must be > 0, got {self.ffn_dim_multiplier!r}")
        biggest = max(self.vocab_size * self.dim, self.ffn_hidden * self.dim, self.num_classes * self.dim,
                      self.caption_dim * self.cls_token_num)
        need(biggest <= MAX_TABLE_ELEMENTS, f"a weight table of {biggest} elements is beyond any real model")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU width: int(2 * 4 * dim / 3), times ffn_dim_multiplier, rounded up to multiple_of."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @property
    def has_null_class(self) -> bool:
        """Whether classifier-free guidance has an unconditional input (c2i: the extra label row)."""
        return self.model_type == "t2i" or self.class_dropout_prob > 0

    @property
    def seq_len(self) -> int:
        """Condition tokens + image tokens: the longest sequence the KV cache holds."""
        return self.cls_token_num + self.block_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> GPTConfig:
        _check_names(overrides)
        return replace(self, **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GPTConfig:
        """A flat ``GPTConfig`` mapping, or the parity fixture's ``config.json`` (``model_type`` + ``model_args``)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a GPT config must be a JSON object, got {type(data).__name__}")
        if "model_args" in data:
            args = data["model_args"]
            if not isinstance(args, Mapping):
                raise ConfigError("'model_args' must be a JSON object of LlamaGen ModelArgs fields")
            flat = dict(args)
            if "model_type" in data:
                flat.setdefault("model_type", data["model_type"])
        else:
            flat = dict(data)
        flat = {k: v for k, v in flat.items() if k not in IGNORED_OFFICIAL_FIELDS}
        _check_names(flat)
        return cls(**flat)

    @classmethod
    def from_json(cls, path: str | Path) -> GPTConfig:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"GPT config {str(path)!r} does not exist or is not a file")
        if path.stat().st_size > 1 << 20:
            raise ConfigError(f"GPT config {path} is over 1 MiB; a config is a small JSON object")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"GPT config {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)


def _check_names(values: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        hints = [f"{u!r} (did you mean {close_matches(u, known)[0]!r}?)" if close_matches(u, known) else repr(u)
                 for u in unknown]
        raise ConfigError(f"unknown GPT config field(s): {', '.join(hints)}; fields are {', '.join(sorted(known))}")


# name -> (dim, n_layer, n_head, parameter count as LlamaGen states it). The sizes of LlamaGen's gpt.py.
SIZES: dict[str, tuple[int, int, int, str]] = {
    "b": (768, 12, 12, "111M"),
    "l": (1024, 24, 16, "343M"),
    "xl": (1280, 36, 20, "775M"),
    "xxl": (1536, 48, 24, "1.4B"),
    "3b": (3200, 24, 32, "3.1B"),
}
# The tiny size of the parity fixture: 2 layers of width 64, 512 codes, a 4x4 grid, 10 classes.
TEST_SIZE: dict[str, Any] = {
    "dim": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512, "block_size": 16, "num_classes": 10, "caption_dim": 32,
}
T2I_DEFAULTS: dict[str, Any] = {"model_type": "t2i", "cls_token_num": 120}


def named_config(name: str, **overrides: Any) -> GPTConfig:
    """``gpt-b`` ... ``gpt-3b``, ``gpt-test`` and their ``-t2i`` variants, with field overrides."""
    base, t2i = (name[: -len("-t2i")], True) if name.endswith("-t2i") else (name, False)
    size = base.removeprefix("gpt-")
    if size == "test":
        values: dict[str, Any] = dict(TEST_SIZE)
    elif size in SIZES:
        dim, n_layer, n_head, _ = SIZES[size]
        values = {"dim": dim, "n_layer": n_layer, "n_head": n_head}
    else:
        raise ConfigError(f"unknown GPT size {name!r}; sizes are " + ", ".join(f"gpt-{s}" for s in [*SIZES, "test"]))
    if t2i:
        values.update(T2I_DEFAULTS)
    _check_names(overrides)
    return GPTConfig(**{**values, **overrides})
