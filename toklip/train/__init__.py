"""Training TokLIP: losses, data, the distributed trainer, checkpoints, the quickstart and the ablations.

Heavy modules load on first use: ``from toklip.train import train, Trainer, TrainConfig``.
"""

from __future__ import annotations

from toklip.core.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY)
