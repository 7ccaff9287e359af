"""One training forward: the student (TokLIP's trainable image path + frozen text tower) and the teacher.

``StudentForward`` is the module DDP/FSDP wrap: it returns open_clip's output dict (normalised features,
``exp(logit_scale)``, ``logit_bias``) plus per-token features when all-token distillation needs them.
``Teacher`` runs the semantic encoder's own image tower (patch embedding, bidirectional), frozen, on the
same images, as the official training does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.errors import ConfigError


class StudentForward(nn.Module):
    """images [B, 3, S, S] in [-1, 1] + token ids [B, L] -> features for the loss."""

    def __init__(self, model: nn.Module, *, return_tokens: bool = False, use_bias: bool = False) -> None:
        super().__init__()
        self.model = model
        self.return_tokens = return_tokens
        self.use_bias = use_bias

    def forward(self, images: Tensor, text_ids: Tensor) -> dict[str, Tensor | None]:
        m = self.model
        out = m.tokenize(images)
        image_features = F.normalize(out.pooled, dim=-1)
        text_trainable = m.text is not None and any(p.requires_grad for p in m.text.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and text_trainable):
            text_features = m.encode_text(text_ids, normalize=True)
        return {
            "image_features": image_features,
            "text_features": text_features,
            "logit_scale": m.logit_scale.exp(),
            "logit_bias": m.logit_bias if self.use_bias else None,
            "tokens": out.features if self.return_tokens else None,
        }


class Teacher(nn.Module):
    """The frozen teacher: a timm ViT (the encoder's ``build_teacher()``) on the student's images.

    Images arrive in the VQ's [-1, 1] range; ``model.teacher_inputs`` converts them to the teacher's own
    normalisation, and they are resized bilinearly only when the teacher expects another resolution."""

    def __init__(self, vit: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.vit = vit.eval().requires_grad_(False)
        self._convert = student.teacher_inputs
        size = getattr(getattr(vit, "patch_embed", None), "img_size", None)
        self.image_size = tuple(size) if size is not None else None
        self.num_prefix_tokens = int(getattr(vit, "num_prefix_tokens", 0))

    def train(self, mode: bool = True) -> Teacher:
        super().train(False)  # always in eval mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor, *, return_tokens: bool = False) -> tuple[Tensor, Tensor | None]:
        """-> (pooled embedding [B, E], patch tokens [B, n, D] or None); no gradients."""
        x = self._convert(images)
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        x = x.to(next(self.vit.parameters()).dtype)
        feats = self.vit.forward_features(x)
        pooled = self.vit.forward_head(feats)
        if pooled.dim() != 2:
            raise ConfigError(f"the teacher's pooled output has shape {tuple(pooled.shape)}, expected [B, E]")
        tokens = feats[:, self.num_prefix_tokens:] if return_tokens else None
        return pooled, tokens


def build_teacher(model: nn.Module) -> Teacher:
    """The teacher the paper uses: the semantic encoder's own image tower, with its loaded weights."""
    builder = getattr(model, "encoder_builder", None)
    if builder is None or not hasattr(builder, "build_teacher"):
        raise ConfigError(
            "this model has no semantic-encoder builder to make the distillation teacher from; build it with "
            "toklip.build(..., encoder={'name': ..., 'pretrained': ...}), pass a teacher, or set loss.distill_weight=0"
        )
    vit = builder.build_teacher().to(model.device)
    return Teacher(vit, model)
