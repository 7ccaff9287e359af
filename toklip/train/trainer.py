"""The training loop: TokLIP's recipe (frozen VQ + teacher + text, trainable projector/encoder/pool/scale).

``Trainer(cfg).fit(resume="latest")`` runs single-process, DDP or FSDP2 (under torchrun) the same way:
autocast (bf16/fp16 with GradScaler), optional gradient clipping, gradient checkpointing that keeps the
causal mask, optional ``torch.compile``, a per-step JSONL log, atomic checkpoints, exact resume, and a clear
stop on a non-finite loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toklip.core.errors import ConfigError, TokLIPError
from toklip.train import checkpoint as ckpt
from toklip.train.config import TrainConfig
from toklip.data.sources import Source
from toklip.train.data import DataPosition, iter_batches, make_loader
from toklip.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    broadcast_object,
    barrier,
    cleanup,
    init_distributed,
    make_grad_scaler,
    clip_grad_norm,
    replicated_params,
    resolve_strategy,
    sync_replicated_grads,
    wrap_model,
)
from toklip.train.metrics_log import trim_for_resume
from toklip.train.optim import Schedule, build_optimizer
from toklip.train.task import make_task

METRICS_NAME = "metrics.jsonl"
RESOLVED_CONFIG = "config.resolved.yaml"


class TrainingError(TokLIPError, RuntimeError):
    """Training stopped: a non-finite loss, or a run that cannot continue."""


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    seconds: float = 0.0
    skipped_samples: int = 0


def set_seed(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class Trainer:
    """One training run of the config's task (``task.name``, see toklip.train.task). Pass ``model``/``source``
    (and, for the toklip task, ``teacher``/``transform``) to override what the config would build."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model: nn.Module | None = None,
        source: Source | None = None,
        teacher: Callable[..., Any] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg.validate()
        overrides = {"model": model, "source": source, "teacher": teacher, "transform": transform}
        self._overrides = {k: v for k, v in overrides.items() if v is not None}  # what the task would build
        self.echo = echo or print

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.info: DistInfo = init_distributed(cfg.train.device, cfg.dist.backend)
        set_seed(cfg.train.seed, cfg.train.deterministic)
        self.out_dir = Path(cfg.train.out_dir).expanduser()
        self.task = make_task(cfg)
        self.task.setup(cfg, self.info, **self._overrides)
        self.source, self.model = self.task.source, self.task.model
        self.strategy = resolve_strategy(cfg.dist.strategy, self.info)
        self.wrapped = wrap_model(self.task.module, self.strategy, self.info,
                                  find_unused=cfg.dist.find_unused_parameters)
        self.runner = torch.compile(self.wrapped) if cfg.model.compile else self.wrapped
        self.replicated = replicated_params(self.wrapped) if self.strategy == "fsdp" else []
        self.optimizer = build_optimizer(self.wrapped, cfg.optim)
        self.scaler = make_grad_scaler(self.strategy, self.info, enabled=cfg.train.precision == "fp16")
        self.global_batch = cfg.data.batch_size * self.info.world_size
        self.total_steps = self._total_steps()
        self.schedule = Schedule(self.optimizer, cfg.optim, self.total_steps)

    def _total_steps(self) -> int:
        t = self.cfg.train
        if t.steps is not None:
            return t.steps
        n = self.source.num_samples
        if not n:
            raise ConfigError(
                "train.epochs needs the number of samples per epoch: set data.num_samples (WebDataset shards "
                "without img2dataset _stats.json files), or give train.steps instead"
            )
        return max(1, math.ceil(float(t.epochs) * n / self.global_batch))  # type: ignore[arg-type]

    def _autocast(self) -> contextlib.AbstractContextManager:
        p = self.cfg.train.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(device_type=self.info.device.type, dtype=dtype)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, step: int, position: DataPosition) -> Path | None:
        model_state = ckpt.full_model_state(self.wrapped)
        osd = ckpt.full_optimizer_state(self.wrapped, self.optimizer)
        positions = all_gather_object(self.info, position.state_dict())
        rngs = all_gather_object(self.info, ckpt.rng_state())
        path = None
        if self.info.is_main:
            optim_tensors, optim_meta = ckpt.flatten_optimizer(osd)
            state = {
                "step": step,
                "total_steps": self.total_steps,
                "world_size": self.info.world_size,
                "data_workers": self.cfg.data.workers,
                "data": {str(r): p for r, p in enumerate(positions)},
                "rng": {str(r): s for r, s in enumerate(rngs)},
                "optimizer": optim_meta,
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "config": self.cfg.to_dict(),
            }
            path = ckpt.write_checkpoint(
                ckpt.checkpoint_root(self.out_dir), step, save_model=self.task.save, model_state=model_state,
                optim_tensors=optim_tensors, state=state, keep_last=self.cfg.train.keep_last,
            )
        barrier(self.info)
        return path

    def _resume(self, resume: str | None) -> tuple[int, DataPosition, Path | None]:
        if not resume:
            earlier = ckpt.complete_checkpoints(ckpt.checkpoint_root(self.out_dir))
            if earlier:  # its higher step numbers would outrank this run's checkpoints (pruning, fallback resume)
                raise ConfigError(
                    f"{self.out_dir} already holds checkpoints of an earlier run (up to {earlier[-1].name}): pass "
                    "--resume latest to continue it, or choose a new train.out_dir"
                )
            return 0, DataPosition(), None
        if self.info.is_main:
            ckpt.clean_stale(ckpt.checkpoint_root(self.out_dir))  # a killed writer's .tmp folder
        barrier(self.info)
        # rank 0 decides, so every rank loads the same step (or fails clearly when it cannot see that folder)
        found = ckpt.find_checkpoint(self.out_dir, resume) if self.info.is_main else None
        path = broadcast_object(self.info, None if found is None else str(found))
        path = None if path is None else Path(path)
        if path is not None and not (path / ckpt.STATE_NAME).is_file():
            raise ConfigError(
                f"rank {self.info.rank} cannot see the checkpoint {path} that rank 0 resumes from: checkpoints must be "
                "on a filesystem every node shares (train.out_dir)"
            )
        if path is None:
            if self.info.is_main:
                self.echo(f"no checkpoint in {ckpt.checkpoint_root(self.out_dir)} yet: starting from step 0")
            return 0, DataPosition(), None
        model_state, osd, state = ckpt.read_checkpoint_dir(path)  # train_state.json checked against its schema
        if state["step"] > self.total_steps:
            raise ConfigError(
                f"the checkpoint {path} is at step {state['step']}, past the {self.total_steps} steps this run "
                "trains for: raise train.steps (or train.epochs) to continue it, or resume an earlier checkpoint"
            )
        saved_total = int(state.get("total_steps", self.total_steps))
        if saved_total != self.total_steps and self.info.is_main:
            warnings.warn(
                f"the checkpoint was written by a run of {saved_total} steps and this one has {self.total_steps} "
                "(train.steps/epochs, data.batch_size or the number of processes changed): the lr schedule now "
                "follows the new length", stacklevel=2,
            )
        ckpt.load_model_state(self.wrapped, model_state,
                              trained_only=bool(getattr(self.task, "checkpoints_trained_only", False)))
        ckpt.load_optimizer_state(self.wrapped, self.optimizer, osd)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rank = str(self.info.rank)
        workers = self.cfg.data.workers
        saved_workers = state.get("data_workers", workers)
        # 0 and 1 loader workers both read the process's share as one sequence (worker 0)
        if int(state.get("world_size", 1)) == self.info.world_size and max(saved_workers, 1) == max(workers, 1):
            position = DataPosition(state["data"].get(rank))
            if rank in state.get("rng", {}):
                ckpt.set_rng_state(state["rng"][rank])
        else:
            # each worker's position is within its own share, and the shares depend on processes x workers:
            # with another split the positions mean nothing, so every share restarts at the same epoch
            epochs = [w.get("epoch", 0) for p in state["data"].values() for w in (p or {}).values()]
            epoch = min(epochs, default=0)
            warnings.warn(
                f"resuming with {self.info.world_size} process(es) x {workers} loader worker(s) from a checkpoint "
                f"of {state.get('world_size')} process(es) x {saved_workers} loader worker(s): the data stream "
                f"restarts at the beginning of epoch {epoch}", stacklevel=2,
            )
            skipped = sum(w.get("skipped", 0) for w in (state["data"].get(rank) or {}).values())
            position = DataPosition({w: {"epoch": epoch, "pos": 0, "skipped": skipped if w == 0 else 0}
                                     for w in range(max(workers, 1))})
        if self.info.is_main:
            self.echo(f"resumed from {path} at step {state['step']}")
        return int(state["step"]), position, path

    # ------------------------------------------------------------------ metrics
    def _metrics_file(self, start_step: int) -> Any:
        """metrics.jsonl, open for appending, one line per step. The lines of steps up to ``start_step`` stay; the
        later ones (a killed run's, which this run logs again) and unreadable ones are set aside beside it, never
        deleted, and a warning says where (toklip.train.metrics_log)."""
        path = self.out_dir / METRICS_NAME
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path} is not a file: training logs one line per step there; move it away")
        if path.is_file():
            note = trim_for_resume(path, start_step).message(path, start_step)
            if note:
                warnings.warn(note, stacklevel=2)
        return open(path, "a", encoding="utf-8")

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: str | None = None) -> TrainResult:
        t_start = time.perf_counter()
        flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                 torch.backends.cudnn.benchmark)
        try:
            self._setup()
            return self._fit(resume, t_start)
        finally:
            # train.deterministic is for this run only, not for whatever the calling process does next
            torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
            torch.backends.cudnn.benchmark = flags[2]
            if hasattr(self, "info"):
                cleanup(self.info)

    def _fit(self, resume: str | None, t_start: float) -> TrainResult:
        cfg, info = self.cfg, self.info
        step, position, resumed_from = self._resume(resume)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / RESOLVED_CONFIG)
            n_train = sum(p.numel() for p in self.wrapped.parameters() if p.requires_grad)
            self.echo(
                f"training {self.task.describe()}: {n_train / 1e6:.2f} M trainable parameters, "
                f"{self.strategy if info.distributed else 'single process'} x{info.world_size} on {info.device}, "
                f"{self.total_steps} steps of {self.global_batch} ({self.source.describe()})"
            )
        stream = self.task.stream(cfg, info)
        stream.set_resume(position.workers)
        batches: Iterator[dict[str, Any]] = iter_batches(make_loader(stream, cfg.data.workers))
        metrics = self._metrics_file(step) if info.is_main else None
        bar = None
        if info.is_main and cfg.train.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        history: list[dict[str, Any]] = []
        last_ckpt = resumed_from
        t_last, samples_since = time.perf_counter(), 0
        skipped = position.skipped
        self.wrapped.train()
        try:
            while step < self.total_steps:
                batch = next(batches)
                lr = self.schedule.apply(step)
                losses = self._train_step(batch)
                values = torch.stack(list(losses.values()))
                total = float(values.sum())
                step += 1
                position.update(batch["state"])
                samples_since += self.global_batch
                if not math.isfinite(total):
                    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise TrainingError(
                        f"the loss became {total} at step {step} ({dict(zip(losses, values.tolist()))}); training "
                        f"stopped and {where}. Lower optim.lr, enable optim.grad_clip, or use "
                        "train.precision=bf16/fp32."
                    )
                record = {"step": step, "loss": total, **{k: float(v) for k, v in zip(losses, values)},
                          "lr": lr, **self.task.log_values(), "epoch": position.epoch}
                if step % cfg.train.log_every == 0 or step == self.total_steps:
                    now = time.perf_counter()
                    skipped = sum(all_gather_object(info, position.skipped))
                    record["samples_per_s"] = samples_since / max(now - t_last, 1e-9)
                    record["skipped"] = skipped  # unreadable samples so far, all processes (and epochs)
                    t_last, samples_since = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}", skipped=skipped, refresh=False)
                history.append(record)
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if bar is not None:
                    bar.update(1)
                final = step == self.total_steps
                if step % cfg.train.ckpt_every == 0 or (final and cfg.train.save_final):
                    last_ckpt = self._save(step, position)
                    if info.is_main:
                        msg = f"checkpoint saved step={step} path={last_ckpt}"
                        (bar.write if bar is not None else self.echo)(msg)
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        return TrainResult(step=step, out_dir=self.out_dir, checkpoint=last_ckpt, history=history, model=self.model,
                           seconds=time.perf_counter() - t_start, skipped_samples=skipped)

    def _train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step; -> the loss terms (detached, averaged over ranks). No update when one is not finite."""
        with self._autocast():
            losses = self.task.losses(self.runner, batch, self.info.device)
        # one all-reduce gives the logged values and a verdict every rank shares (a NaN on any rank makes the
        # mean NaN everywhere), so no rank starts a backward the others skip
        reduced = all_reduce_mean(self.info, torch.stack([v.detach().float() for v in losses.values()]))
        logged = dict(zip(losses, reduced))
        if not bool(torch.isfinite(reduced).all()):
            self.optimizer.zero_grad(set_to_none=True)
            return logged  # the caller stops with a clear message; no update from a broken step
        self.scaler.scale(sum(losses.values())).backward()
        sync_replicated_grads(self.replicated, self.info)
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            clip_grad_norm([p for p in self.wrapped.parameters() if p.requires_grad], self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step()
        return logged


def train(
    config: TrainConfig | str | Path | dict | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    resume: str | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Python API: ``toklip.train.train("cfg.yaml", ["train.steps=100"], resume="latest")``; ``config`` may also be
    a mapping of sections or a ``TrainConfig``."""
    cfg = config if isinstance(config, TrainConfig) and not overrides else TrainConfig.load(config, overrides)
    return Trainer(cfg, **kwargs).fit(resume=resume)
