"""Evaluation: zero-shot classification (ImageNet layout) and image-text retrieval (Karpathy/COCO layout)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "zero_shot": "toklip.eval.zeroshot:zero_shot",
    "build_classifier": "toklip.eval.zeroshot:build_classifier",
    "topk_accuracy": "toklip.eval.zeroshot:topk_accuracy",
    "retrieval": "toklip.eval.retrieval:retrieval",
    "retrieval_metrics": "toklip.eval.retrieval:retrieval_metrics",
    "load_model": "toklip.eval.common:load_model",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'toklip.eval' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
