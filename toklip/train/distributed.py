"""Process groups and model wrapping: torchrun's environment, DDP, and FSDP2 (``fully_shard``).

Launch with ``torchrun`` (single node: ``torchrun --nproc-per-node 8 -m toklip.train.cli ...``; several nodes:
``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``); the trainer reads RANK / WORLD_SIZE /
LOCAL_RANK and initialises the default group itself. Without those variables everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from toklip.core.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but torch sees no CUDA device; use train.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device_name: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the default process group when launched by torchrun (or reuse an existing one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        device = pick_device(device_name, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(rank, world, local_rank, device, initialized_here=False)
    device = pick_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    be = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {"backend": be}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, initialized_here=True)


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    if not info.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / info.world_size


def resolve_strategy(strategy: str, info: DistInfo) -> str:
    if strategy == "auto":
        return "ddp" if info.distributed else "none"
    if strategy in ("ddp", "fsdp") and not info.distributed:
        return "none" if strategy == "ddp" else "fsdp"
    return strategy


def wrap_model(module: nn.Module, strategy: str, info: DistInfo, *, find_unused: bool = False) -> nn.Module:
    """DDP, or FSDP2: each of the model's ``fsdp_units()`` is its own shard group, then the root (torchtitan
    style): TokLIP's token-encoder and text blocks, a generator's layers, a VLM's TokLIP blocks and LLM decoder
    layers. Frozen units are sharded too, which keeps per-rank memory flat (So400M, a 7B LLM)."""
    if strategy == "none":
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=find_unused)
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError as e:  # pragma: no cover - torch < 2.6
            raise ConfigError("dist.strategy='fsdp' needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)") from e
        if not info.distributed and not dist.is_initialized():
            raise ConfigError("dist.strategy='fsdp' needs a process group: launch with torchrun")
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        model = module.model if hasattr(module, "model") else module
        if not hasattr(model, "fsdp_units"):
            raise ConfigError(f"dist.strategy='fsdp': {type(model).__name__} has no fsdp_units() naming the blocks "
                              "to shard; use dist.strategy=ddp")
        for unit in model.fsdp_units():
            fully_shard(unit, mesh=mesh)
        # FSDP2 cannot shard 0-d parameters: logit_scale/logit_bias stay replicated (see sync_replicated_grads)
        fully_shard(module, mesh=mesh, ignored_params=set(replicated_params(module)))
        return module
    raise ConfigError(f"unknown dist.strategy {strategy!r}")


def replicated_params(module: nn.Module) -> list[nn.Parameter]:
    """Parameters FSDP2 leaves alone (0-d scalars such as logit_scale): their gradients are averaged by hand."""
    return [p for p in module.parameters() if p.ndim == 0]


def sync_replicated_grads(params: list[nn.Parameter], info: DistInfo) -> None:
    if not info.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(info.world_size)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Global-norm clipping that works for plain, DDP and FSDP2 (DTensor) gradients alike."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = []
    for g in grads:
        n = g.detach().float().norm(2)
        norms.append(n.full_tensor() if hasattr(n, "full_tensor") else n)
    total = float(torch.stack(norms).norm(2))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.detach().mul_(coef)
    return total


def make_grad_scaler(strategy: str, info: DistInfo, *, enabled: bool) -> Any:
    """fp16 loss scaling; under FSDP the sharded scaler, so every rank agrees on skipping a step with inf grads."""
    if enabled and strategy == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(info.device.type)
    return torch.amp.GradScaler(info.device.type, enabled=enabled)
