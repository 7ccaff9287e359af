"""The ``toklip`` task: the paper's tokenizer training (contrastive against the frozen text tower plus
distillation to the frozen teacher; VQ frozen), on image-caption data."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError
from toklip.data.sources import Source, open_source
from toklip.train.config import TrainConfig
from toklip.train.data import BatchStream, ImageText
from toklip.train.distributed import DistInfo
from toklip.train.losses import TokLIPLoss, clamp_logit_scale
from toklip.train.step import StudentForward, build_teacher


def build_model(cfg: TrainConfig) -> Any:
    """The TokLIP to train: ``model.init`` (a checkpoint/folder) or ``toklip.build`` from the model section."""
    import toklip

    m = cfg.model
    pretrained: bool | str = False
    if m.init:
        path = Path(m.init).expanduser()
        if path.is_dir():
            return toklip.from_pretrained(path)
        pretrained = str(path)
    elif m.preset is None and (m.vq is None or m.encoder is None):
        raise ConfigError("model: give a preset (model.preset=toklip-s-256) or both model.vq and model.encoder")
    return toklip.build(m.preset, vq=m.vq, encoder=m.encoder, projector=m.projector, attention=m.attention,
                        attn_backend=m.attn_backend, image_size=m.image_size, pretrained=pretrained)


def prepare_for_training(model: nn.Module, loss: TokLIPLoss, *, lock_text: bool) -> None:
    """What trains and what stays frozen: the paper's split (VQ, teacher and, by default, text frozen)."""
    model.vq.requires_grad_(False)
    if model.text is not None:
        model.lock_text(lock_text)
    if model.fusion is not None:
        model.fusion.requires_grad_(False)  # fusion is for downstream use; no loss term reaches it
    if model.logit_bias is not None:
        model.logit_bias.requires_grad_(loss.needs_bias)  # the official run removes the bias (CLIP loss)
    # without a contrastive term nothing reaches the scale (and DDP would stop on an unused parameter)
    model.logit_scale.requires_grad_(bool(loss.config.contrastive_weight))
    if loss.needs_bias and model.logit_bias is None:
        raise ConfigError("loss.contrastive='siglip' needs a logit_bias; this encoder has none (use 'clip')")
    if loss.config.token_distill_weight and model.causal:
        raise ConfigError(
            "all-token distillation (loss.token_distill_weight > 0) needs model.attention=bidirectional: a causal "
            "token cannot see what the teacher's bidirectional token sees (paper Table B2)"
        )
    if model.text is None or model.tokenizer is None:
        raise ConfigError("TokLIP training needs a text tower and tokenizer; this encoder provides none")


class TokLIPTask:
    """Images + captions -> TokLIP loss terms (``toklip.train.losses``)."""

    name = "toklip"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.check_options(options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        if options:
            raise ConfigError(f"the toklip task has no options (got {', '.join(map(repr, options))}); its settings "
                              "live in the model, data and loss sections")

    def setup(self, cfg: TrainConfig, info: DistInfo, *, model: nn.Module | None = None,
              source: Source | None = None, teacher: Callable[..., Any] | None = None,
              transform: Callable[[Tensor], Tensor] | None = None) -> None:
        # the data first: a wrong data.path fails at once, not after building (and downloading) the model
        self.source = source if source is not None else open_source(cfg.data)
        model = model if model is not None else build_model(cfg)
        self.loss = TokLIPLoss(cfg.loss, rank=info.rank, world_size=info.world_size)
        prepare_for_training(model, self.loss, lock_text=cfg.model.lock_text)
        model.set_grad_checkpointing(cfg.model.grad_checkpointing)
        model.to(info.device).train()
        self.model, self.transform = model, transform
        self.token_distill = bool(cfg.loss.token_distill_weight)
        self.need_teacher = bool(cfg.loss.distill_weight or cfg.loss.token_distill_weight)
        self.teacher = teacher
        if self.teacher is None and self.need_teacher:
            if not getattr(model.encoder_builder, "pretrained", None):
                warnings.warn(
                    "the semantic encoder has no pretrained weights, so the distillation teacher is random: give "
                    "model.encoder={name: ..., pretrained: ...} (the paper's teacher is SigLIP2) or set "
                    "loss.distill_weight=0", stacklevel=3,
                )
            self.teacher = build_teacher(model)
        self.module = StudentForward(model, return_tokens=self.token_distill, use_bias=self.loss.needs_bias)

    def stream(self, cfg: TrainConfig, info: DistInfo) -> BatchStream:
        m = self.model
        samples = ImageText(image_size=m.image_size, tokenizer=m.tokenizer, resize_mode=m.config.resize_mode,
                            max_pixels=cfg.data.max_pixels, transform=self.transform)
        return BatchStream(
            self.source, batch_size=cfg.data.batch_size, decode=samples.decode, collate=samples.collate,
            rank=info.rank, world=info.world_size, workers=cfg.data.workers, seed=cfg.train.seed,
            shuffle=cfg.data.shuffle,
        )

    def losses(self, runner: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        images = batch["images"].to(device, non_blocking=True)
        ids = batch["text_ids"].to(device, non_blocking=True)
        out = runner(images, ids)
        teacher_pooled = teacher_tokens = None
        if self.need_teacher:
            teacher_pooled, teacher_tokens = self.teacher(images, return_tokens=self.token_distill)
        return self.loss(
            out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
            teacher_features=teacher_pooled, logit_bias=out["logit_bias"],
            tokens=None if out["tokens"] is None else out["tokens"].float(), teacher_tokens=teacher_tokens,
        )

    def after_step(self) -> None:
        clamp_logit_scale(self.model)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.model.logit_scale.detach().exp())}

    def save(self, directory: Path, state: dict[str, Tensor]) -> None:
        from toklip.weights.saved import save_pretrained

        save_pretrained(self.model, directory, state=state)  # the folder toklip.from_pretrained / toklip eval read

    def describe(self) -> str:
        return self.model.config.name or "TokLIP"
