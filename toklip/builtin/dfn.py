"""Apple DFN CLIP encoders (open_clip ``*-quickgelu`` models, tags dfn5b / dfn2b) for TokLIP.

open_clip's native CLIP vision tower is mapped onto the equivalent timm ViT (``vit_*_clip_quickgelu_*``: pre-norm,
QuickGELU, LayerNorm eps 1e-5, class token, bias-free projection head), so the token encoder is the same timm
blocks with toklip's attention backends. In the token encoder the class token is appended *last* with its
position row moved to the end (TokLIP's CLIP-style causal path): under the causal mask it still sees every
image token, and the image embedding is ``proj(ln_post(x[:, -1]))``. The teacher is the unmodified tower,
whose output equals open_clip's ``encode_image``. Images use OpenAI CLIP's mean/std.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from toklip.builtin.openclip_base import CLIP_BPE, OpenCLIPEncoderBase
from toklip.layers.vit_adapter import timm_vit
from toklip.core.errors import ConfigError

from open_clip.constants import OPENAI_DATASET_MEAN as OPENAI_CLIP_MEAN  # the one copy: open_clip's
from open_clip.constants import OPENAI_DATASET_STD as OPENAI_CLIP_STD

# open_clip model -> the timm entry point with the same architecture
TIMM_NAMES = {
    "ViT-H-14-378-quickgelu": "vit_huge_patch14_clip_quickgelu_378",
    "ViT-H-14-quickgelu": "vit_huge_patch14_clip_quickgelu_224",
    "ViT-L-14-quickgelu": "vit_large_patch14_clip_quickgelu_224",
    "ViT-B-16-quickgelu": "vit_base_patch16_clip_quickgelu_224",
}

# open_clip visual key fragment -> timm key fragment (applied in order)
_SWAPS = (
    ("conv1.", "patch_embed.proj."),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm."),
    ("transformer.resblocks.", "blocks."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)


def open_clip_visual_to_timm(visual: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip CLIP ``visual.*`` weights (prefix stripped) -> timm VisionTransformer names."""
    out: dict[str, Tensor] = {}
    for key, value in visual.items():
        if key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        elif key == "proj":
            out["head.weight"] = value.t().contiguous()
        else:
            for old, new in _SWAPS:
                key = key.replace(old, new)
            out[key] = value
    return out


class DFNEncoder(OpenCLIPEncoderBase):
    """A DFN (or any OpenAI-style open_clip CLIP) encoder; ``model`` is an open_clip config name or ``dfn-test``."""

    registry_name = "dfn"
    pool = "last"
    mean = OPENAI_CLIP_MEAN
    std = OPENAI_CLIP_STD
    TINY_CONFIGS: Mapping[str, Mapping[str, Any]] = {
        "dfn-test": {
            "embed_dim": 64,
            "quick_gelu": True,
            "timm_name": "vit_base_patch16_clip_quickgelu_224",
            "vision_cfg": {"image_size": 64, "patch_size": 8, "layers": 2, "width": 64, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
            "tokenizer": CLIP_BPE,
        }
    }

    def __init__(self, model: str = "ViT-H-14-378-quickgelu", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        vc = self.cfg["vision_cfg"]
        if "timm_model_name" in vc:
            raise ConfigError(f"{model!r} is a timm-trunk open_clip model; use a siglip2 encoder for it")
        self.timm_name = self.cfg.get("timm_name") or TIMM_NAMES.get(model)
        if self.timm_name is None:
            raise ConfigError(f"no timm equivalent known for open_clip model {model!r}; known: {sorted(TIMM_NAMES)}")
        width = int(vc["width"])
        arch = {
            "embed_dim": width,
            "depth": int(vc["layers"]),
            "num_heads": width // int(vc.get("head_width", 64)),
            "mlp_ratio": float(vc.get("mlp_ratio", 4.0)),
        }
        self.vision_overrides = {**arch, **self.vision_overrides}
        if not self.tokenizer_name:
            self.tokenizer_name = CLIP_BPE

    def _default_patch_size(self) -> int:
        return int(self.cfg["vision_cfg"].get("patch_size", 14))

    def build_vit(self) -> nn.Module:
        overrides = {**self.vision_overrides, "patch_size": self.patch_size, "num_classes": self.embed_dim}
        vit = timm_vit(self.timm_name, img_size=self.image_size, pool="token", overrides=overrides)
        vit.head = nn.Linear(vit.embed_dim, self.embed_dim, bias=False)  # CLIP's `proj` has no bias
        return vit

    def load_visual(self, vit: nn.Module) -> None:
        if self.state() is None:
            return
        from toklip.weights import load_state_dict_strict

        converted = open_clip_visual_to_timm(self._subset("visual."))
        load_state_dict_strict(vit, converted, source=f"{self.pretrained} [visual.*]")

    def build_text_tower(self) -> nn.Module | None:
        from open_clip.model import _build_text_tower

        tower = _build_text_tower(self.embed_dim, dict(self.text_cfg), quick_gelu=bool(self.cfg.get("quick_gelu")))
        state = self.state()
        if state is not None:
            from toklip.weights import load_state_dict_strict

            # open_clip's CLIP keeps the text tower at the top level of its state dict
            text = {k: v for k, v in state.items()
                    if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias", "attn_mask")}
            load_state_dict_strict(tower, text, source=f"{self.pretrained} [text]")
        return tower

