"""Host-side launch helpers both ops share: the launch-config type, grid arithmetic, the ``tl.dot`` precision
and the choice between the interpreter's fixed tiles and the GPU heuristic (or autotuner)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from toklip_kernels import _runtime, _tuning


@dataclass(frozen=True)
class Tiles:
    """One launch config: tile sizes along up to three axes, plus Triton's ``num_warps`` / ``num_stages``.

    Each op says which of its axes the tiles cover (attention: ``block_m`` queries, ``block_n`` keys; lookup +
    MLP: ``block_m`` tokens, ``block_n`` output features, ``block_k`` hidden units; 0 = axis not tiled).
    """

    block_m: int
    block_n: int
    block_k: int = 0
    num_warps: int = 4
    num_stages: int = 2


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for grid sizes."""
    return -(-a // b)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: fp32 inputs are the test path and get exact products, not TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def choose(key: Hashable, candidates: Sequence[Tiles], run: Callable[[Tiles], object], *, on_gpu: bool,
           interpreter: Tiles) -> Tiles:
    """The config to launch with: `interpreter` for the interpreter's configs, else ``candidates[0]`` or, with
    autotuning on a real GPU, the fastest candidate for `key`."""
    if not on_gpu:
        return interpreter
    return _tuning.pick(key, candidates, run, on_gpu=not _runtime.interpreted())
