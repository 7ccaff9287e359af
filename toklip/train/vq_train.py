"""Training a LlamaGen VQ tokenizer on small data (the quickstart's first stage).

LlamaGen's tokenizer loss without its perceptual and GAN terms: L2 reconstruction, the codebook loss
``mean((e[idx] - z.detach())^2)`` and the commitment loss ``beta * mean((e[idx].detach() - z)^2)`` on the
l2-normalised latent ``z`` and codebook ``e`` (beta = 0.25), with the straight-through estimator. The module's
own parameters are trained, so the result saves in LlamaGen's release layout (``{"model": state_dict}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class VQTrainResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def vq_forward(vq: nn.Module, images: Tensor, beta: float = 0.25) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """-> (reconstruction, losses, indices) with gradients to encoder, decoder and codebook."""
    latent = vq.quant_conv(vq.encoder(images))
    z = F.normalize(latent.permute(0, 2, 3, 1), dim=-1)  # [B, h, w, c]
    e = F.normalize(vq.quantize.embedding.weight, dim=-1)
    flat = z.reshape(-1, z.shape[-1])
    idx = (flat @ e.t()).argmax(dim=1)  # nearest unit vector = largest cosine
    zq = e[idx].reshape(z.shape)
    losses = {
        "codebook": F.mse_loss(zq, z.detach()),
        "commit": beta * F.mse_loss(z, zq.detach()),
    }
    st = z + (zq - z).detach()
    recon = vq.decoder(vq.post_quant_conv(st.permute(0, 3, 1, 2)))
    losses["recon"] = F.mse_loss(recon, images)
    return recon, losses, idx.reshape(z.shape[:-1])


def train_vq(
    vq: nn.Module,
    images: Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    augment: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "VQ tokenizer",
) -> VQTrainResult:
    """Adam with a short warmup and cosine decay over ``images`` [N, 3, S, S] in [-1, 1]; in place.

    Exactly ``steps`` seeded steps: a slow or busy machine takes longer and trains the same model."""
    from tqdm.auto import tqdm

    from toklip.train.optim import lr_at

    vq.requires_grad_(True).train()
    opt = torch.optim.Adam(vq.parameters(), lr=lr, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(seed)
    warm = max(1, steps // 20)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base_lr=lr, warmup=warm, total=steps, min_lr=lr * 0.02)
        x = images[torch.randint(len(images), (batch_size,), generator=g)]
        if augment is not None:
            x = augment(x)
        _, losses, idx = vq_forward(vq, x)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {k: float(v.detach()) for k, v in losses.items()}
        rec["codes_used"] = int(idx.unique().numel())
        history.append(rec)
        if step % 10 == 0:
            bar.set_postfix(recon=f"{rec['recon']:.4f}", codes=rec["codes_used"], refresh=False)
    bar.close()
    vq.requires_grad_(False).eval()
    return VQTrainResult(steps=len(history), seconds=time.perf_counter() - t0, history=history)


@torch.no_grad()
def reconstruct(vq: Any, images: Tensor) -> Tensor:
    """Encode to indices and decode through the public API (what TokLIP's frozen VQ does)."""
    return vq.decode(vq.encode(images).indices).clamp(-1, 1)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) / 2).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()
