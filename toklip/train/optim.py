"""AdamW with open_clip's weight-decay rule and the official warmup + cosine schedule.

No decay on parameters with fewer than 2 dimensions or whose name contains ``bn``, ``ln``, ``bias`` or
``logit_scale`` (open_clip's ``exclude``); decay on everything else, ``pos_embed`` and the MAP ``latent``
included. The schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from toklip.core.errors import ConfigError
from toklip.train.config import OptimConfig


def excluded_from_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale"))


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if excluded_from_decay(name, p) else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters")
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    fused = None
    if all(p.is_cuda for p in model.parameters() if p.requires_grad):
        fused = True
    return torch.optim.AdamW(
        param_groups(model.named_parameters(), cfg.weight_decay),
        lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused,
    )


def lr_at(
    step: int, *, base_lr: float, warmup: int, total: int, schedule: str = "cosine", min_lr: float = 0.0
) -> float:
    """open_clip's ``cosine_lr``: lr * (step + 1) / warmup during warmup, then cosine from lr to ``min_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "const":
        return base_lr
    span = max(1, total - warmup)
    e = min(step - warmup, span)
    return min_lr + 0.5 * (1 + math.cos(math.pi * e / span)) * (base_lr - min_lr)


class Schedule:
    """Sets the learning rate of every param group before each step; its state is the config alone."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> None:
        self.optimizer, self.cfg, self.total = optimizer, cfg, int(total_steps)
        if cfg.warmup >= self.total and cfg.schedule == "cosine" and self.total > 1:
            import warnings

            warnings.warn(
                f"optim.warmup ({cfg.warmup}) >= total steps ({self.total}): the run never leaves warmup",
                stacklevel=2,
            )

    def lr(self, step: int) -> float:
        c = self.cfg
        return lr_at(step, base_lr=c.lr, warmup=c.warmup, total=self.total, schedule=c.schedule, min_lr=c.min_lr)

    def apply(self, step: int) -> float:
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"total": self.total, "lr": self.cfg.lr, "warmup": self.cfg.warmup, "schedule": self.cfg.schedule,
                "min_lr": self.cfg.min_lr}
