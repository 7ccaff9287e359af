"""Pre-training a small CLIP (the quickstart's teacher) with a semantic encoder's own architecture.

The encoder component (e.g. ``siglip2-test`` at a chosen image/patch size) provides the vision tower (timm
ViT with patch embedding and MAP pool) and the text tower; they train contrastively with open_clip's
``ClipLoss``. ``state_dict()`` is in open_clip's layout (``visual.trunk.*``, ``text.*``, ``logit_scale``,
``logit_bias``), so ``toklip.build(encoder={"name": ..., "pretrained": file})`` initialises TokLIP from it
exactly as the paper initialises from SigLIP2.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OpenCLIPLayout(nn.Module):
    """A vision trunk + text tower + logit scale/bias with open_clip's parameter names."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.trunk = encoder.build_vit()
        self.text = encoder.build_text_tower()
        if self.text is None:
            raise ValueError(f"encoder {encoder.name!r} has no text tower to pre-train")
        scale, bias = encoder.logit_init()
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias if bias is not None else -10.0)))
        self.tokenizer = encoder.build_tokenizer()

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        out = self.visual.trunk(images)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, ids: Tensor, normalize: bool = False) -> Tensor:
        out = self.text(ids)
        return F.normalize(out, dim=-1) if normalize else out


@dataclass
class CLIPTrainResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_clip(
    model: OpenCLIPLayout,
    images: Tensor,
    captions: Sequence[str] | Callable[[int], str],
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    augment: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "teacher CLIP",
) -> CLIPTrainResult:
    """Contrastive training on ``images`` [N, 3, S, S] with one caption per image (or a function of the index
    giving a fresh caption each time); AdamW, warmup + cosine; logit scale clamped to ln(100).

    Exactly ``steps`` seeded steps: a slow or busy machine takes longer and trains the same model."""
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    from toklip.train.optim import lr_at, param_groups

    model.train()
    opt = torch.optim.AdamW(param_groups(model.named_parameters(), weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    g = torch.Generator().manual_seed(seed)
    caption_of = captions if callable(captions) else (lambda i: captions[i])  # type: ignore[index]
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    warm = max(1, steps // 10)
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base_lr=lr, warmup=warm, total=steps, min_lr=lr * 0.02)
        idx = torch.randperm(len(images), generator=g)[:batch_size]
        x = images[idx]
        if augment is not None:
            x = augment(x)
        ids = model.tokenizer([caption_of(int(i)) for i in idx])
        loss = loss_fn(model.encode_image(x, normalize=True), model.encode_text(ids, normalize=True),
                       model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        history.append({"loss": float(loss.detach()), "logit_scale": float(model.logit_scale.detach().exp())})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", refresh=False)
    bar.close()
    model.eval()
    return CLIPTrainResult(steps=len(history), seconds=time.perf_counter() - t0, history=history)
