"""SigLIP2 semantic encoders through open_clip (timm trunk + MAP pooling), as TokLIP uses them.

Random init needs no network. ``pretrained="webli"`` (or True) reads open_clip's release for the model from
the HF hub (``timm/<open_clip name>``); ``pretrained="/path/file"`` reads a local open_clip state dict, such as
the teacher files the official ``covert.py`` writes. With ``source="hf"``, ``pretrained`` is a transformers
``SiglipModel`` checkpoint instead: a hub repo id (``google/siglip2-so400m-patch16-256``) or a local folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from toklip.builtin.openclip_base import CLIP_BPE, OpenCLIPEncoderBase
from toklip.layers.vit_adapter import timm_vit

TINY_TEXT = {
    "context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2, "mlp_ratio": 3.7362,
    "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
    "act_kwargs": {"approximate": "tanh"},
}


class SigLIP2Encoder(OpenCLIPEncoderBase):
    """A SigLIP2 family member. ``vision`` overrides timm kwargs (embed_dim, depth, num_heads, mlp_ratio);
    ``text`` overrides the open_clip text config; both let any fixture-sized model be described."""

    registry_name = "siglip2"
    pool = "map"
    TINY_CONFIGS: Mapping[str, Mapping[str, Any]] = {
        "siglip2-test": {
            "embed_dim": 64,
            "init_logit_bias": -10.0,
            "vision_cfg": {"image_size": 64, "patch_size": 8, "timm_model_name": "vit_so400m_patch16_siglip_256"},
            "vision_overrides": {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 3.7362},
            "text_cfg": TINY_TEXT,
            "tokenizer": CLIP_BPE,
        }
    }

    def __init__(self, model: str = "ViT-SO400M-16-SigLIP2-256", *, source: str = "open_clip", **kwargs: Any) -> None:
        if source not in ("open_clip", "hf"):
            from toklip.core.errors import ConfigError

            raise ConfigError(f"source must be 'open_clip' or 'hf' (transformers checkpoints), got {source!r}")
        self.source = source
        super().__init__(model, **kwargs)
        self.timm_name = self.cfg["vision_cfg"]["timm_model_name"]
        if self.cfg["vision_cfg"].get("timm_pool", "map") != "map":
            self.pool = self.cfg["vision_cfg"]["timm_pool"]

    def _read_pretrained(self, pretrained: bool | str) -> dict[str, Any]:
        if self.source == "hf":
            from toklip.builtin.siglip2_hf import hf_siglip_to_open_clip, read_hf_state

            return hf_siglip_to_open_clip(read_hf_state(pretrained))  # type: ignore[arg-type]
        return super()._read_pretrained(pretrained)

    def build_vit(self) -> nn.Module:
        overrides = dict(self.vision_overrides)
        overrides.setdefault("patch_size", self.patch_size)
        return timm_vit(self.timm_name, img_size=self.image_size, pool="map", overrides=overrides)

    def load_visual(self, vit: nn.Module) -> None:
        self._load(vit, "visual.trunk.")
