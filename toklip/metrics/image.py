"""PSNR and SSIM of reconstructions (torchmetrics), per image and then averaged, on images quantised to 8 bits
as they are saved (LlamaGen's ``clamp(127.5 x + 128)``), with a data range of 1."""

from __future__ import annotations

import torch
from torch import Tensor


def to_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] images -> [0, 1], rounded to the 8-bit values a saved PNG holds."""
    return (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).float() / 255.0


def psnr(preds: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of [0, 1] images ``[B, 3, H, W]`` -> ``[B]``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(preds.double(), target.double(), data_range=1.0, dim=(1, 2, 3),
                                   reduction="none").float()


def mean_psnr(images: Tensor, reference: Tensor) -> float:
    """Mean per-image PSNR in dB of two [-1, 1] batches as saved to 8-bit PNGs (what reports and demos print)."""
    return float(psnr(to_unit_range(images), to_unit_range(reference)).mean())


def ssim(preds: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5) of [0, 1] images ``[B, 3, H, W]`` -> ``[B]``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(preds.double(), target.double(), data_range=1.0,
                                               reduction="none").float()
