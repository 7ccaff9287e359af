"""AIMv2 as a toklip semantic encoder: timm's ``aimv2_*`` ViTs (RMSNorm, SwiGLU, no biases, average pooling).

AIMv2 checkpoints have no text tower (except the LiT variant, not supported here), so a TokLIP built on one has
no text side: ``encode_text`` raises, and training can use it for distillation and initialisation only. The
patch-embedding RMSNorm is kept as the token encoder's ``embed_norm``, applied to the projected VQ tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from toklip import ConfigError

from open_clip.constants import OPENAI_DATASET_MEAN as OPENAI_CLIP_MEAN  # the one copy: open_clip's
from open_clip.constants import OPENAI_DATASET_STD as OPENAI_CLIP_STD

TINY = {"timm": "aimv2_large_patch14_224", "image_size": 56, "patch_size": 7,
        "overrides": {"embed_dim": 64, "depth": 2, "num_heads": 4}}


class AIMv2Encoder:
    """``model`` is a timm name (``aimv2_large_patch14_224``, ...) or ``aimv2-test``; ``pretrained`` a local
    transformers-native or timm-layout checkpoint file (toklip.build resolves hub tags to files)."""

    mean = OPENAI_CLIP_MEAN
    std = OPENAI_CLIP_STD
    init_logit_scale = math.log(1 / 0.07)
    init_logit_bias = None

    def __init__(
        self,
        model: str = "aimv2_large_patch14_224",
        *,
        image_size: int | None = None,
        vision: dict[str, Any] | None = None,
        pretrained: str | None = None,
    ) -> None:
        if model == "aimv2-test":
            self.timm_name, default_size, self.patch_size = TINY["timm"], TINY["image_size"], TINY["patch_size"]
            self.overrides = {**TINY["overrides"], "patch_size": self.patch_size}  # type: ignore[dict-item]
        elif model.startswith("aimv2_"):
            self.timm_name, default_size, self.patch_size = model, int(model.rsplit("_", 1)[-1]), 14
            self.overrides = {}
        else:
            raise ConfigError(f"unknown AIMv2 model {model!r}: use a timm name like 'aimv2_large_patch14_224'")
        self.overrides.update(vision or {})
        self.image_size = int(image_size or default_size)
        self.pretrained = pretrained
        self._state: dict[str, Tensor] | None = None
        self.embed_dim = int(self.overrides.get("embed_dim") or self._timm_width())

    def _timm_width(self) -> int:
        return {"large": 1024, "huge": 1536, "1b": 2048, "3b": 3072}[self.timm_name.split("_")[1]]

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    def _vit(self) -> nn.Module:
        from toklip.layers import timm_vit

        vit = timm_vit(self.timm_name, img_size=self.image_size, pool="avg", overrides=self.overrides)
        if self.pretrained:
            from toklip.weights import load_state_dict_strict

            load_state_dict_strict(vit, self._weights(), source=str(self.pretrained))
        return vit

    def _weights(self) -> dict[str, Tensor]:
        if self._state is None:
            from toklip.weights import read_checkpoint, unwrap_state_dict
            from toklip_plugin_aim.convert import hf_aimv2_to_timm, is_timm_layout

            state = unwrap_state_dict(read_checkpoint(str(self.pretrained)))
            self._state = state if is_timm_layout(state) else hf_aimv2_to_timm(state)
        return self._state

    def build_token_encoder(self, grid: tuple[int, int]) -> nn.Module:
        from toklip.layers import token_encoder_from_timm

        return token_encoder_from_timm(self._vit(), grid, pool="avg")

    def build_teacher(self) -> nn.Module:
        vit = self._vit()
        vit.eval().requires_grad_(False)
        return vit

    def build_text_tower(self) -> nn.Module | None:
        return None

    def build_tokenizer(self) -> Callable[[Sequence[str]], Tensor] | None:
        return None

    def logit_init(self) -> tuple[float, float | None]:
        return self.init_logit_scale, None
