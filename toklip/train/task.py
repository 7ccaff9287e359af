"""What a training run trains.

The :class:`~toklip.train.trainer.Trainer` owns what every run needs: processes (DDP/FSDP2), precision, the
optimizer and schedule, atomic checkpoints, exact resume, ``metrics.jsonl`` and the stop on a non-finite loss. A
*task* owns the rest: its model (what trains and what stays frozen), its batches and its loss terms. The config
picks one with ``task.name``; the other keys of the ``task`` section are the task's own options::

    task: {name: gen, generator: gpt-b, tokenizer: toklip-s-256, fusion: concat, num_classes: 1000}

Tasks: ``toklip`` (the paper's tokenizer training), ``gen`` (an autoregressive generator over VQ tokens),
``vlm`` (a language model reading TokLIP features).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from toklip.core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn
    from torch.utils.data import IterableDataset

    from toklip.train.config import TrainConfig
    from toklip.train.distributed import DistInfo

# task name -> "module:class"
TASKS: dict[str, str] = {
    "toklip": "toklip.train.toklip_task:TokLIPTask",
    "gen": "toklip.gen.train:GeneratorTask",
    "vlm": "toklip.vlm.train:VLMTask",
}


@runtime_checkable
class TrainTask(Protocol):
    """The part of a training run that depends on what is trained.

    After :meth:`setup`: ``model`` is what checkpoints save (its parameters' ``requires_grad`` say what trains),
    ``module`` is what DDP/FSDP wrap (it holds ``model`` as ``module.model``, the prefix checkpoints use), and
    ``source`` is the training data (``num_samples`` and ``describe()`` are read by the trainer). Under
    ``dist.strategy=fsdp``, ``model.fsdp_units()`` lists the sub-modules sharded one by one (blocks, layers).

    ``checkpoints_trained_only`` (optional, default False): :meth:`save` writes the trained tensors alone and resume
    loads them over a model whose frozen parts :meth:`setup` rebuilt from their sources (a 7B LLM is not copied into
    every checkpoint)."""

    name: str
    model: nn.Module
    module: nn.Module
    source: Any

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ConfigError for a bad ``task`` section (unknown keys, wrong types), before anything is built."""

    def setup(self, cfg: TrainConfig, info: DistInfo, **overrides: Any) -> None:
        """Build (or take from ``overrides``: model, source, ...) the model and the data; freeze what stays frozen."""

    def stream(self, cfg: TrainConfig, info: DistInfo) -> IterableDataset:
        """Endless batches of this process's share; each batch carries ``state`` (its loader worker's position)."""

    def losses(self, runner: nn.Module, batch: dict[str, Any], device: Any) -> dict[str, Tensor]:
        """The loss terms of one batch (called under the run's autocast); their sum is minimised."""

    def after_step(self) -> None:
        """Anything after an optimizer update (e.g. clamping TokLIP's logit scale)."""

    def log_values(self) -> dict[str, float]:
        """Extra values for each metrics.jsonl line."""

    def save(self, directory: Path, state: dict[str, Tensor]) -> None:
        """Write the model folder of a checkpoint (safetensors + JSON) that the task's loader rebuilds from."""

    def describe(self) -> str:
        """What is trained, for the run's first log line."""


def task_class(name: Any) -> type:
    """The task class registered under ``name`` (a clear error naming the choices otherwise)."""
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task.name must be one of {', '.join(TASKS)}, got {name!r}")
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def task_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``task`` section without its ``name``."""
    return {k: v for k, v in options.items() if k != "name"}


def make_task(cfg: TrainConfig) -> TrainTask:
    return task_class(cfg.task.get("name", "toklip"))(task_options(cfg.task))
