"""Evaluation: zero-shot classification (ImageNet layout) and image-text retrieval (Karpathy/COCO layout)."""

from __future__ import annotations

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "zero_shot": "toklip.eval.zeroshot:zero_shot",
    "build_classifier": "toklip.eval.zeroshot:build_classifier",
    "topk_accuracy": "toklip.eval.zeroshot:topk_accuracy",
    "retrieval": "toklip.eval.retrieval:retrieval",
    "retrieval_metrics": "toklip.eval.retrieval:retrieval_metrics",
    "load_model": "toklip.eval.common:load_model",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
