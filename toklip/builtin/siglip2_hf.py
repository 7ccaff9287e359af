"""SigLIP / SigLIP2 weights from Hugging Face transformers checkpoints (``SiglipModel``), as an alternative source.

A transformers folder or hub repo (``google/siglip2-so400m-patch16-256``) is read as safetensors — no model code
from the checkpoint runs, no ``trust_remote_code`` — and renamed to the open_clip layout toklip's SigLIP2
encoders already load (``visual.trunk.*`` in timm names, ``text.*`` as open_clip's TextTransformer). Both the
transformers 4.x layout (``vision_model.``/``text_model.`` prefixes) and 5.x's flattened towers are accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from toklip.core.errors import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def read_hf_state(source: str | Path) -> dict[str, Tensor]:
    """All tensors of a transformers checkpoint: a local folder (single or sharded safetensors) or a hub repo id."""
    from toklip.weights import read_checkpoint

    folder = Path(source).expanduser()
    if folder.is_file():
        return dict(read_checkpoint(folder))
    if folder.is_dir():
        files = _local_files(folder)
    else:
        files = _hub_files(str(source))
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(read_checkpoint(f))
    return state


def _local_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        return [folder / name for name in sorted(set(index["weight_map"].values()))]
    raise CheckpointError(f"{folder} has no {WEIGHTS} or {INDEX}: not a transformers safetensors checkpoint")


def _hub_files(repo_id: str) -> list[Path]:
    from toklip.core.errors import WeightsNotFoundError
    from toklip.weights.hub import hub_file

    try:
        return [hub_file(repo_id, WEIGHTS, what="SigLIP weights")]
    except WeightsNotFoundError:
        index_path = hub_file(repo_id, INDEX, what="SigLIP weights index")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    return [hub_file(repo_id, name, what="SigLIP weights shard") for name in sorted(set(index["weight_map"].values()))]


def _tower(state: Mapping[str, Tensor], prefix: str, marker: str) -> dict[str, Tensor]:
    """One tower's tensors with its prefix removed (``vision_model.``; transformers 5 may save it flat)."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if sub:
        return sub
    if any(k.startswith(marker) for k in state):  # a bare SiglipVisionModel / SiglipTextModel
        return dict(state)
    return {}


def _layers(tower: Mapping[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in tower.items():
        m = _LAYER.match(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return layers


def _block(src: Mapping[str, Tensor], qkv: str, proj: str, names: Mapping[str, str]) -> dict[str, Tensor]:
    out = {names[k]: v for k, v in src.items() if k in names}
    for part in ("weight", "bias"):
        pieces = [src.get(f"self_attn.{x}_proj.{part}") for x in "qkv"]
        if all(p is not None for p in pieces):
            out[f"{qkv}{part}" if qkv.endswith("_") else f"{qkv}.{part}"] = torch.cat(pieces, dim=0)  # type: ignore[arg-type]
        o = src.get(f"self_attn.out_proj.{part}")
        if o is not None:
            out[f"{proj}.{part}"] = o
    return out


def vision_to_timm(tower: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers SiglipVisionTransformer -> timm VisionTransformer (MAP head) names."""
    out: dict[str, Tensor] = {}
    emb = "embeddings."
    out["patch_embed.proj.weight"] = tower[emb + "patch_embedding.weight"]
    if emb + "patch_embedding.bias" in tower:
        out["patch_embed.proj.bias"] = tower[emb + "patch_embedding.bias"]
    out["pos_embed"] = tower[emb + "position_embedding.weight"].unsqueeze(0)
    names = {f"{a}.{p}": f"{b}.{p}" for a, b in [("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                                                  ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
             for p in ("weight", "bias")}
    for i, src in sorted(_layers(tower).items()):
        for k, v in _block(src, "attn.qkv", "attn.proj", names).items():
            out[f"blocks.{i}.{k}"] = v
    for p in ("weight", "bias"):
        out[f"norm.{p}"] = tower[f"post_layernorm.{p}"]
    if "head.probe" in tower:
        width = tower["head.probe"].shape[-1]
        out["attn_pool.latent"] = tower["head.probe"]
        w, b = tower["head.attention.in_proj_weight"], tower["head.attention.in_proj_bias"]
        out["attn_pool.q.weight"], out["attn_pool.kv.weight"] = w[:width], w[width:]
        out["attn_pool.q.bias"], out["attn_pool.kv.bias"] = b[:width], b[width:]
        for p in ("weight", "bias"):
            out[f"attn_pool.proj.{p}"] = tower[f"head.attention.out_proj.{p}"]
            out[f"attn_pool.norm.{p}"] = tower[f"head.layernorm.{p}"]
            out[f"attn_pool.mlp.fc1.{p}"] = tower[f"head.mlp.fc1.{p}"]
            out[f"attn_pool.mlp.fc2.{p}"] = tower[f"head.mlp.fc2.{p}"]
    return out


def text_to_open_clip(tower: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers SiglipTextTransformer -> open_clip TextTransformer names (last-token pooling, Linear head)."""
    out: dict[str, Tensor] = {
        "token_embedding.weight": tower["embeddings.token_embedding.weight"],
        "positional_embedding": tower["embeddings.position_embedding.weight"],
    }
    names = {f"{a}.{p}": f"{b}.{p}" for a, b in [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                                  ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
             for p in ("weight", "bias")}
    for i, src in sorted(_layers(tower).items()):
        for k, v in _block(src, "attn.in_proj_", "attn.out_proj", names).items():
            out[f"transformer.resblocks.{i}.{k}"] = v
    for p in ("weight", "bias"):
        out[f"ln_final.{p}"] = tower[f"final_layer_norm.{p}"]
        out[f"text_projection.{p}"] = tower[f"head.{p}"]
    return out


def hf_siglip_to_open_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers SiglipModel state dict -> open_clip CustomTextCLIP layout (what SigLIP2Encoder loads)."""
    vision = _tower(state, "vision_model.", "embeddings.patch_embedding")
    if not vision:
        raise CheckpointError("no SigLIP vision tower in this checkpoint (expected vision_model.* keys)")
    try:
        out = {f"visual.trunk.{k}": v for k, v in vision_to_timm(vision).items()}
        text = _tower(state, "text_model.", "embeddings.token_embedding")
        if text and "embeddings.token_embedding.weight" in text:
            out.update({f"text.{k}": v for k, v in text_to_open_clip(text).items()})
    except KeyError as e:
        raise CheckpointError(f"not a SigLIP checkpoint in the transformers layout: missing {e}") from e
    for key in ("logit_scale", "logit_bias"):
        if key in state:
            out[key] = state[key].reshape(())
    return out
