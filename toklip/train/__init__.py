"""Training TokLIP: losses, data, the distributed trainer, checkpoints, the quickstart and the ablations.

Heavy modules load on first use: ``from toklip.train import train, Trainer, TrainConfig``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train": "toklip.train.trainer:train",
    "Trainer": "toklip.train.trainer:Trainer",
    "TrainResult": "toklip.train.trainer:TrainResult",
    "TrainingError": "toklip.train.trainer:TrainingError",
    "TrainConfig": "toklip.train.config:TrainConfig",
    "LossConfig": "toklip.train.losses:LossConfig",
    "TokLIPLoss": "toklip.train.losses:TokLIPLoss",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'toklip.train' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
