"""TokLIP's training loss: a contrastive term (open_clip's ClipLoss or SigLipLoss) plus distillation.

The official loss (``DistillSimpleClipLoss``) is CLIP InfoNCE on l2-normalised features plus
``1000 * MSE(student, teacher.detach())`` on the l2-normalised pooled image embeddings, summed with weight 1.
Here the contrastive term is open_clip's own module (so multi-GPU gathering behaves exactly as open_clip's),
and the weights are configurable; the defaults reproduce the official numbers. All-token distillation (the
paper's Table B2 variant for bidirectional encoders) adds an MSE between l2-normalised per-token features.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.errors import ConfigError

# open_clip gathers with torch.distributed.nn.all_gather, deprecated (still correct) in recent torch
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")

LOGIT_SCALE_MAX = math.log(100.0)  # open_clip clamps exp(logit_scale) <= 100 after every step
CONTRASTIVE = ("clip", "siglip")


@dataclass
class LossConfig:
    """What the loss computes. ``distill_weight`` multiplies the MSE (official: 1000, i.e. ~1.74 x (1 - cos))."""

    contrastive: str = "clip"  # "clip" (official InfoNCE) or "siglip" (sigmoid loss, needs logit_bias)
    contrastive_weight: float = 1.0
    distill_weight: float = 1000.0
    token_distill_weight: float = 0.0  # all-token MSE on normalised tokens (bidirectional students only)
    local_loss: bool = False  # open_clip's --local-loss: logits of the local batch against the gathered one
    gather_with_grad: bool = True  # gradients flow through the gathered features (exact full-batch gradient)

    def validate(self) -> LossConfig:
        if self.contrastive not in CONTRASTIVE:
            raise ConfigError(f"loss.contrastive must be one of {CONTRASTIVE}, got {self.contrastive!r}")
        for name in ("contrastive_weight", "distill_weight", "token_distill_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or not math.isfinite(value):
                raise ConfigError(f"loss.{name} must be a finite number >= 0, got {value!r}")
        if self.contrastive_weight == 0 and self.distill_weight == 0 and self.token_distill_weight == 0:
            raise ConfigError("every loss weight is 0: nothing would be trained")
        return self


def l2n(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


def distill_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error over all elements against a detached target (the official ``F.mse_loss``)."""
    if student.shape != teacher.shape:
        raise ConfigError(
            f"the student's image embedding {tuple(student.shape)} and the teacher's {tuple(teacher.shape)} differ "
            "in shape; the teacher must be the semantic encoder the token encoder was initialised from"
        )
    return F.mse_loss(student, teacher.detach().to(student.dtype))


def match_token_grid(teacher_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Teacher patch tokens [B, n, D] on its own square grid -> [B, grid_h*grid_w, D] (bilinear when different)."""
    b, n, d = teacher_tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"the teacher has {n} patch tokens, not a square grid; all-token distillation needs one")
    if (side, side) == tuple(grid):
        return teacher_tokens
    x = teacher_tokens.transpose(1, 2).reshape(b, d, side, side).float()
    x = F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False)
    return x.reshape(b, d, -1).transpose(1, 2).to(teacher_tokens.dtype)


def token_grid(tokens: Tensor, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (h, w) grid of per-token features [B, N, D]: ``grid`` when given, else the square one."""
    n = tokens.shape[1]
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        if h * w != n:
            raise ConfigError(f"the student has {n} tokens, which is not a {h}x{w} grid")
        return h, w
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"the student has {n} tokens, not a square grid; pass grid=(h, w) to the loss")
    return side, side


class TokLIPLoss(nn.Module):
    """``forward(...) -> {"contrastive_loss", "distill_loss"[, "token_distill_loss"]}``; the total is the sum.

    Each term already carries its weight, as open_clip's loss dicts do, so ``sum(losses.values())`` is what to
    back-propagate. ``rank``/``world_size`` turn on feature gathering across processes."""

    def __init__(self, config: LossConfig | None = None, *, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        from open_clip.loss import ClipLoss, SigLipLoss

        self.config = (config or LossConfig()).validate()
        if self.config.contrastive == "clip":
            self.contrastive: nn.Module = ClipLoss(
                local_loss=self.config.local_loss, gather_with_grad=self.config.gather_with_grad,
                cache_labels=True, rank=rank, world_size=world_size,
            )
        else:
            self.contrastive = SigLipLoss(cache_labels=True, rank=rank, world_size=world_size)

    @property
    def needs_bias(self) -> bool:
        return self.config.contrastive == "siglip"

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        *,
        teacher_features: Tensor | None = None,
        logit_bias: Tensor | None = None,
        tokens: Tensor | None = None,
        teacher_tokens: Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> dict[str, Tensor]:
        """Features are l2-normalised [B, E]; ``logit_scale`` is exp'd (as ``model(...)`` returns it).

        ``tokens`` [B, N, D] are the student's per-token features on ``grid`` (default: a square grid), and
        ``teacher_tokens`` [B, n, D] the teacher's patch tokens; the teacher's grid is resized to the student's
        when they differ."""
        cfg = self.config
        out: dict[str, Tensor] = {}
        if cfg.contrastive_weight:
            if cfg.contrastive == "siglip":
                if logit_bias is None:
                    raise ConfigError("the SigLIP loss needs a logit_bias; build with an encoder that has one")
                con = self.contrastive(image_features, text_features, logit_scale, logit_bias)
            else:
                con = self.contrastive(image_features, text_features, logit_scale)
            out["contrastive_loss"] = cfg.contrastive_weight * con
        if cfg.distill_weight:
            if teacher_features is None:
                raise ConfigError("distill_weight > 0 needs the teacher's image features")
            out["distill_loss"] = cfg.distill_weight * distill_mse(image_features, l2n(teacher_features.float()))
        if cfg.token_distill_weight:
            if tokens is None or teacher_tokens is None:
                raise ConfigError("token_distill_weight > 0 needs the student's and the teacher's per-token features")
            target = match_token_grid(teacher_tokens.detach(), token_grid(tokens, grid))
            if target.shape != tokens.shape:
                raise ConfigError(
                    f"the student's tokens {tuple(tokens.shape)} and the teacher's {tuple(target.shape)} (after "
                    "matching the token grid) differ in shape; all-token distillation needs the same width"
                )
            out["token_distill_loss"] = cfg.token_distill_weight * distill_mse(l2n(tokens), l2n(target.float()))
        return out


def clamp_logit_scale(model: nn.Module, max_value: float = LOGIT_SCALE_MAX) -> None:
    """open_clip's post-step clamp: 0 <= logit_scale <= ln(100)."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, Tensor):
        with torch.no_grad():
            scale.clamp_(0, max_value)
