"""Launch configurations: a fixed heuristic by default, measured once per shape key when autotuning is on.

``TOKLIP_TRITON_AUTOTUNE=1`` times every candidate with ``triton.testing.do_bench`` the first time a key is
seen (GPU only) and keeps the fastest for the rest of the process. Candidates must be side-effect free
(kernels that only write their outputs), which every kernel in this package is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

Config = TypeVar("Config")

_lock = threading.Lock()
_best: dict[Hashable, Any] = {}


def autotune_enabled() -> bool:
    return os.environ.get("TOKLIP_TRITON_AUTOTUNE", "").lower() in {"1", "true", "yes", "on"}


def pick(key: Hashable, candidates: Sequence[Config], run: Callable[[Config], object], *, on_gpu: bool) -> Config:
    """The config to launch with: ``candidates[0]``, or the fastest candidate when autotuning on a GPU."""
    if not on_gpu or not autotune_enabled() or len(candidates) == 1:
        return candidates[0]
    with _lock:
        if key in _best:
            return _best[key]
    from triton.testing import do_bench

    timings = []
    for cfg in candidates:
        try:
            timings.append((do_bench(lambda cfg=cfg: run(cfg), warmup=5, rep=20), cfg))
        except Exception:  # noqa: BLE001 - a config that does not fit (shared memory, registers) is skipped
            continue
    best = min(timings, key=lambda t: t[0])[1] if timings else candidates[0]
    with _lock:
        _best[key] = best
    return best


def clear() -> None:
    with _lock:
        _best.clear()
