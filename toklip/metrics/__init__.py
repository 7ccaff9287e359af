"""Reconstruction and codebook metrics: PSNR / SSIM (torchmetrics), codebook usage, perplexity and entropy, and
rFID / LPIPS through torchmetrics with weights the user supplies (nothing downloads). Lazy: importing
``toklip.metrics`` does not import torch."""

from __future__ import annotations

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "code_counts": "toklip.metrics.codebook:code_counts",
    "codebook_stats": "toklip.metrics.codebook:codebook_stats",
    "psnr": "toklip.metrics.image:psnr",
    "ssim": "toklip.metrics.image:ssim",
    "to_unit_range": "toklip.metrics.image:to_unit_range",
    "FIDMetric": "toklip.metrics.perceptual:FIDMetric",
    "LPIPSMetric": "toklip.metrics.perceptual:LPIPSMetric",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
