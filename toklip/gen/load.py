"""Load LlamaGen GPT checkpoints: release files (``{'model': state_dict}``, FSDP/DeepSpeed layouts, plain state
dicts, safetensors), strictly and safely (toklip's reader: tensors only, nothing unpickled beyond them).

The configuration is a named size (``gpt-b``), a ``GPTConfig``, a mapping, or a ``config.json`` (flat fields or
the parity fixture's ``model_type`` + ``model_args``); without one it is inferred from the weights, except the
image-token count, which a release file does not hold (pass ``block_size``: 256 at 256 px, 576 at 384 px).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import CheckpointError, ConfigError
from toklip.gen.config import SIZES, GPTConfig, named_config
from toklip.gen.gpt import GPT
from toklip.gen.rope import rope_2d_table
from toklip.model.loading import materialize_missing
from toklip.weights.readers import load_state_dict_strict, read_checkpoint, unwrap_state_dict

ConfigSource = str | Path | Mapping[str, Any] | GPTConfig
DERIVED_KEY = "freqs_cis"  # the RoPE table, saved by some exports; derived, so checked and dropped
CACHE_SUFFIXES = (".attention.kv_cache.k_cache", ".attention.kv_cache.v_cache")  # sampling scratch


def gpt_state_dict(obj: Any) -> dict[str, Tensor]:
    """The GPT state dict inside a LlamaGen checkpoint (``model``, DeepSpeed ``module``, or plain)."""
    if isinstance(obj, Mapping) and "model" not in obj and isinstance(obj.get("module"), Mapping):
        obj = obj["module"]
    return unwrap_state_dict(obj)


def infer_gpt_config(state: Mapping[str, Tensor], **overrides: Any) -> GPTConfig:
    """A config from release weights: size from the width, GQA heads from ``wqkv``, c2i/t2i from the condition
    embedder. ``block_size`` comes from ``overrides`` or a stored ``freqs_cis``."""
    emb = state.get("tok_embeddings.weight")
    if emb is None or emb.ndim != 2:
        raise ConfigError("cannot infer the GPT config: no tok_embeddings.weight [vocab, dim]; pass config=...")
    vocab, dim = emb.shape
    known = {d: (name, n_layer, n_head) for name, (d, n_layer, n_head, _) in SIZES.items()}
    n_layer = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    values: dict[str, Any] = {"dim": dim, "vocab_size": vocab, "n_layer": n_layer}
    if "n_head" not in overrides:
        if dim not in known:
            raise ConfigError(f"width {dim} is none of LlamaGen's sizes ({', '.join(f'{n}: {d}' for d, (n, *_) in known.items())}); "
                              "pass config=... or n_head=...")
        values["n_head"] = known[dim][2]
    n_head = overrides.get("n_head", values.get("n_head"))
    wqkv = state.get("layers.0.attention.wqkv.weight")
    if wqkv is not None and isinstance(n_head, int) and n_head > 0 and dim % n_head == 0:
        head_dim = dim // n_head
        kv = (wqkv.shape[0] // head_dim - n_head) // 2
        values["n_kv_head"] = None if kv == n_head else kv
    if "cls_embedding.embedding_table.weight" in state:
        rows = state["cls_embedding.embedding_table.weight"].shape[0]
        values.update(model_type="c2i", cls_token_num=1)
        if "class_dropout_prob" in overrides and overrides["class_dropout_prob"] == 0:
            values["num_classes"] = rows
        else:
            values["num_classes"] = rows - 1  # the last row is the null class
    elif "cls_embedding.uncond_embedding" in state:
        token_num, caption_dim = state["cls_embedding.uncond_embedding"].shape
        values.update(model_type="t2i", cls_token_num=token_num, caption_dim=caption_dim)
    else:
        raise ConfigError("cannot tell c2i from t2i: no cls_embedding.embedding_table or uncond_embedding")
    rope = state.get(DERIVED_KEY)
    if "block_size" not in overrides:
        if rope is None:
            raise ConfigError(
                "a LlamaGen release file does not record the image-token count; pass block_size="
                "(image_size / 16)**2, e.g. 256 for 256 px or 576 for 384 px (or config='gpt-b', block_size=...)"
            )
        values["block_size"] = rope.shape[0] - values["cls_token_num"]
    return GPTConfig(**{**values, **overrides})


def resolve_gpt_config(config: ConfigSource | None, state: Mapping[str, Tensor] | None = None,
                       **overrides: Any) -> GPTConfig:
    """A GPTConfig from any accepted source, with field overrides applied."""
    if isinstance(config, GPTConfig):
        return config.with_overrides(**overrides) if overrides else config
    if isinstance(config, Mapping):
        return GPTConfig.from_dict({**config, **overrides}) if "model_args" not in config else \
            GPTConfig.from_dict(config).with_overrides(**overrides)
    if isinstance(config, Path) or (isinstance(config, str) and config.endswith(".json")):
        base = GPTConfig.from_json(config)
        return base.with_overrides(**overrides) if overrides else base
    if isinstance(config, str):
        return named_config(config, **overrides)
    if config is None:
        if state is None:
            raise ConfigError("pass config=... (a size such as 'gpt-b', a GPTConfig, or a config.json)")
        return infer_gpt_config(state, **overrides)
    raise ConfigError(f"config must be a size name, a path, a mapping or a GPTConfig, got {type(config).__name__}")


def _drop_derived(state: dict[str, Tensor], config: GPTConfig, source: str) -> dict[str, Tensor]:
    state = {k: v for k, v in state.items() if not k.endswith(CACHE_SUFFIXES)}
    rope = state.pop(DERIVED_KEY, None)
    if rope is not None:
        ours = rope_2d_table(config.grid, config.head_dim, config.rope_base, config.cls_token_num)
        if tuple(rope.shape) != tuple(ours.shape) or not torch.allclose(rope.float(), ours, atol=1e-4):
            raise CheckpointError(
                f"checkpoint {source} stores a RoPE table (freqs_cis {tuple(rope.shape)}) that differs from this "
                f"config's 2-D table {tuple(ours.shape)}: wrong block_size / cls_token_num, or not a 2-D RoPE model"
            )
    return state


def load_gpt(
    checkpoint: str | Path,
    config: ConfigSource | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> GPT:
    """Build the GPT and load ``checkpoint`` into it, every key with its shape or a CheckpointError.

    The model adopts the file's tensors (built on the meta device: no random init, no second copy); ``dtype``
    converts after loading (default: the dtype of the file's token embedding). Returned in eval mode."""
    state = gpt_state_dict(read_checkpoint(checkpoint))
    cfg = resolve_gpt_config(config, state, **overrides)
    state = _drop_derived(state, cfg, str(checkpoint))
    with torch.device("meta"):
        model = GPT(cfg)
    load_state_dict_strict(model, state, source=str(checkpoint), assign=True)
    if not materialize_missing(model):  # pragma: no cover - every GPT module re-initialises in place
        raise CheckpointError(f"could not materialise the GPT for {checkpoint}")
    model.to(device=device, dtype=dtype or model.tok_embeddings.weight.dtype)
    return model.eval()
