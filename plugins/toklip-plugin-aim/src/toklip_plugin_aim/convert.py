"""AIMv2 weights in the native transformers layout (``Aimv2VisionModel``) -> timm VisionTransformer names.

The mapping (checked numerically against transformers in the tests): patch embedding and its RMSNorm,
position embeddings, per layer RMSNorms, q/k/v concatenated into ``qkv``, ``out_proj`` -> ``proj``, SwiGLU
``gate_proj``/``up_proj``/``down_proj`` -> ``fc1_g``/``fc1_x``/``fc2``, final RMSNorm -> ``norm``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from toklip import CheckpointError

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_RENAMES = {
    "rms_norm1.weight": "norm1.weight",
    "rms_norm2.weight": "norm2.weight",
    "attention.out_proj.weight": "attn.proj.weight",
    "ffn.gate_proj.weight": "mlp.fc1_g.weight",
    "ffn.up_proj.weight": "mlp.fc1_x.weight",
    "ffn.down_proj.weight": "mlp.fc2.weight",
}


def is_timm_layout(state: Mapping[str, Tensor]) -> bool:
    return "blocks.0.attn.qkv.weight" in state


def hf_aimv2_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert an ``Aimv2VisionModel`` state dict (an ``Aimv2Model``'s ``vision_model.*`` part also works)."""
    if any(k.startswith("vision_model.") for k in state):
        state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    try:
        out: dict[str, Tensor] = {
            "patch_embed.proj.weight": state["embeddings.patch_embed.weight"],
            "patch_embed.norm.weight": state["embeddings.rms_norm.weight"],
            "norm.weight": state["rms_norm.weight"],
        }
        if "embeddings.patch_embed.bias" in state:
            out["patch_embed.proj.bias"] = state["embeddings.patch_embed.bias"]
        if "embeddings.position_embedding.weight" not in state:
            raise CheckpointError("native-resolution AIMv2 checkpoints (sin-cos positions) are not supported")
        out["pos_embed"] = state["embeddings.position_embedding.weight"].unsqueeze(0)
        layers: dict[int, dict[str, Tensor]] = {}
        for key, value in state.items():
            m = _LAYER.match(key)
            if m:
                layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
        for i, src in sorted(layers.items()):
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
                [src[f"attention.{x}_proj.weight"] for x in "qkv"], dim=0
            )
            for old, new in _RENAMES.items():
                out[f"blocks.{i}.{new}"] = src[old]
    except KeyError as e:
        raise CheckpointError(f"not an AIMv2 checkpoint in the transformers layout: missing {e}") from e
    return out
