"""The schema of a checkpoint's ``train_state.json``: every field a resume reads is checked before it is used.

A damaged or hand-edited file is then refused with the field, what it must be and what it holds, instead of a
``ValueError`` from ``np.random.set_state`` or an ``AttributeError`` deep in the data stream, and a value that
would make the run silently wrong (a step of 10**30, a missing rank's data position) is refused too. RNG states
are also tried on throwaway generators, so what ``set_rng_state`` later restores is known to load.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from toklip.core.errors import close_matches

MAX_STEP = 2**53  # the largest integer a JSON number carries exactly; no run comes near it
MAX_RANKS = 2**20
MAX_WORKERS = 2**12
MAX_COUNT = 2**53  # epochs, sample positions and counts

REQUIRED = ("step", "optimizer", "data")
FIELDS = ("step", "total_steps", "world_size", "data_workers", "data", "rng", "optimizer", "schedule", "scaler",
          "config")
POSITION_FIELDS = ("epoch", "pos", "skipped", "seen")
RNG_FIELDS = ("python", "numpy", "torch", "cuda")
SCALER_FIELDS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
MT_WORDS = 624  # Mersenne Twister state words (Python's random and numpy's MT19937)


class SchemaError(ValueError):
    """One field that breaks the schema: ``field`` (a dotted path such as ``rng.0.numpy``) and what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"field '{field}' {problem}" if field else problem)


def missing_fields(state: Any) -> list[str]:
    """The required top-level fields ``state`` lacks (all of them when it is not a JSON object)."""
    return [k for k in REQUIRED if not isinstance(state, dict) or k not in state]


def validate_train_state(state: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` for the first field of ``state`` (parsed train_state.json) that is wrong."""
    unknown = [k for k in state if k not in FIELDS]
    if unknown:
        hint = close_matches(str(unknown[0]), FIELDS, n=1)
        raise SchemaError(str(unknown[0]), "is not a train_state field" + (f" (did you mean '{hint[0]}'?)"
                                                                           if hint else ""))
    _int(state["step"], "step", 0, MAX_STEP)
    if "total_steps" in state:
        _int(state["total_steps"], "total_steps", 1, MAX_STEP)
    world = _int(state.get("world_size", 1), "world_size", 1, MAX_RANKS)
    workers = _int(state.get("data_workers", 0), "data_workers", 0, MAX_WORKERS)
    ranks = {str(r) for r in range(world)}
    _per_rank(state["data"], "data", ranks, lambda p, f: _position(p, f, workers))
    if "rng" in state:
        _per_rank(state["rng"], "rng", ranks, _rng)
    _optimizer(state["optimizer"])
    if "scaler" in state:
        _scaler(state["scaler"])
    for name in ("schedule", "config"):
        if name in state and not isinstance(state[name], dict):
            raise SchemaError(name, f"must be an object, got {_show(state[name])}")


# ---------------------------------------------------------------------------------------------- sections
def _per_rank(value: Any, field: str, ranks: set[str], check: Any) -> None:
    """One entry per process rank "0".."world_size-1": a missing one would silently restart that rank's share."""
    obj = _object(value, field)
    if set(obj) != ranks:
        raise SchemaError(field, f"must have one entry per process, keys {_ranks(ranks)} (world_size), "
                                 f"got keys {_ranks(set(obj))}")
    for rank in sorted(obj, key=int):
        check(obj[rank], f"{field}.{rank}")


def _position(value: Any, field: str, workers: int) -> None:
    """A process's data position: {worker: {"epoch", "pos", "skipped", "seen"}} (an empty one before any batch)."""
    if value is None:
        return
    n_workers = max(workers, 1)  # 0 and 1 loader workers both read as worker 0
    names = {str(w) for w in range(n_workers)}
    for worker, pos in _object(value, field).items():
        where = f"{field}.{worker}"
        if worker not in names:
            raise SchemaError(where, f"names no loader worker of this checkpoint's {n_workers} "
                                     f"('0'..'{n_workers - 1}', data_workers)")
        entry = _object(pos, where)
        _known(entry, where, POSITION_FIELDS)
        for key in ("epoch", "pos"):
            if key not in entry:
                raise SchemaError(f"{where}.{key}", "is missing")
        for key, v in entry.items():
            _int(v, f"{where}.{key}", 0, MAX_COUNT)


def _rng(value: Any, field: str) -> None:
    """One process's RNG states, as ``checkpoint.rng_state`` writes them, each tried on a throwaway generator."""
    obj = _object(value, field)
    _known(obj, field, RNG_FIELDS)
    for key in ("python", "numpy", "torch"):
        if key not in obj:
            raise SchemaError(f"{field}.{key}", "is missing")
    _python_rng(obj["python"], f"{field}.python")
    _numpy_rng(obj["numpy"], f"{field}.numpy")
    _bytes(obj["torch"], f"{field}.torch", torch.get_rng_state().numel())
    try:
        torch.Generator().set_state(torch.tensor(obj["torch"], dtype=torch.uint8))
    except RuntimeError as e:
        raise SchemaError(f"{field}.torch", f"is not a torch CPU generator state ({e})") from None
    if "cuda" in obj:
        devices = _list(obj["cuda"], f"{field}.cuda", max_len=MAX_RANKS)
        size = torch.cuda.get_rng_state(0).numel() if torch.cuda.is_available() else None
        for i, s in enumerate(devices):
            _bytes(s, f"{field}.cuda[{i}]", size, max_len=4096)


def _python_rng(value: Any, field: str) -> None:
    """``random.getstate()``: [3, [624 words + index], gauss_next or null]."""
    items = _list(value, field, length=3)
    if items[0] != 3 or isinstance(items[0], bool):
        raise SchemaError(f"{field}[0]", f"must be 3 (the state version random.getstate writes), got {_show(items[0])}")
    words = _list(items[1], f"{field}[1]", length=MT_WORDS + 1)
    for i, w in enumerate(words[:-1]):
        _int(w, f"{field}[1][{i}]", 0, 2**32 - 1)
    _int(words[-1], f"{field}[1][{MT_WORDS}]", 0, MT_WORDS)
    if items[2] is not None:
        _finite(items[2], f"{field}[2]")
    try:
        random.Random().setstate((3, tuple(words), items[2]))
    except (ValueError, TypeError, OverflowError) as e:
        raise SchemaError(field, f"is not a Python random state ({e})") from None


def _numpy_rng(value: Any, field: str) -> None:
    """``np.random.get_state()``: ["MT19937", [624 words], pos, has_gauss, cached_gaussian]."""
    items = _list(value, field, length=5)
    if items[0] != "MT19937":
        raise SchemaError(f"{field}[0]", f"must be 'MT19937', got {_show(items[0])}")
    words = _list(items[1], f"{field}[1]", length=MT_WORDS)
    for i, w in enumerate(words):
        _int(w, f"{field}[1][{i}]", 0, 2**32 - 1)
    _int(items[2], f"{field}[2]", 0, MT_WORDS)
    _int(items[3], f"{field}[3]", 0, 1)
    _finite(items[4], f"{field}[4]")
    try:
        np.random.RandomState().set_state((items[0], np.array(words, dtype=np.uint32), *items[2:]))
    except (ValueError, TypeError, OverflowError) as e:
        raise SchemaError(field, f"is not a numpy random state ({e})") from None


def _optimizer(value: Any) -> None:
    """``flatten_optimizer``'s JSON half: {"param_groups": [{..., "params": [names]}], "scalars": {name: {k: v}}}."""
    obj = _object(value, "optimizer")
    _known(obj, "optimizer", ("param_groups", "scalars"))
    if "param_groups" not in obj:
        raise SchemaError("optimizer.param_groups", "is missing")
    for i, group in enumerate(_list(obj["param_groups"], "optimizer.param_groups", max_len=MAX_COUNT)):
        where = f"optimizer.param_groups[{i}]"
        group = _object(group, where)
        if "params" not in group:
            raise SchemaError(f"{where}.params", "is missing")
        for j, name in enumerate(_list(group["params"], f"{where}.params", max_len=MAX_COUNT)):
            if not isinstance(name, str):
                raise SchemaError(f"{where}.params[{j}]", f"must be a parameter name, got {_show(name)}")
        for key, v in group.items():
            if key in ("lr", "weight_decay", "eps", "initial_lr"):
                _finite(v, f"{where}.{key}", low=0.0)
            elif key == "betas":
                betas = _list(v, f"{where}.betas", length=2)
                for k, b in enumerate(betas):
                    _finite(b, f"{where}.betas[{k}]", low=0.0, below=1.0)
            elif key != "params" and not (v is None or isinstance(v, (bool, str)) or _is_number(v)):
                raise SchemaError(f"{where}.{key}", f"must be a number, true/false, a string or null, got {_show(v)}")
    for name, values in _object(obj.get("scalars", {}), "optimizer.scalars").items():
        for key, v in _object(values, f"optimizer.scalars.{name}").items():
            _finite(v, f"optimizer.scalars.{name}.{key}")


def _scaler(value: Any) -> None:
    """``GradScaler.state_dict()``: {} for a disabled scaler, else all five fields (load_state_dict reads each)."""
    obj = _object(value, "scaler")
    if not obj:
        return
    _known(obj, "scaler", SCALER_FIELDS)
    for key in SCALER_FIELDS:
        if key not in obj:
            raise SchemaError(f"scaler.{key}", "is missing")
    for key in ("scale", "growth_factor", "backoff_factor"):
        _finite(obj[key], f"scaler.{key}", low=0.0)
        if obj[key] == 0:
            raise SchemaError(f"scaler.{key}", "must be > 0, got 0")
    _int(obj["growth_interval"], "scaler.growth_interval", 1, MAX_COUNT)
    _int(obj["_growth_tracker"], "scaler._growth_tracker", 0, MAX_COUNT)


# ---------------------------------------------------------------------------------------------- values
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any, field: str, low: int, high: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise SchemaError(field, f"must be an integer, got {_show(v)}")
    if not low <= v <= high:
        raise SchemaError(field, f"must be an integer from {low} to {high}, got {_show(v)}")
    return v


def _finite(v: Any, field: str, low: float | None = None, below: float | None = None) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise SchemaError(field, f"must be a finite number, got {_show(v)}")
    if (low is not None and v < low) or (below is not None and v >= below):
        bounds = f">= {low}" if below is None else f"in [{low}, {below})"
        raise SchemaError(field, f"must be {bounds}, got {_show(v)}")
    return float(v)


def _bytes(v: Any, field: str, length: int | None, max_len: int = MAX_COUNT) -> None:
    """A generator state as JSON: a list of ``length`` integers 0..255 (torch.uint8)."""
    items = _list(v, field, length=length, max_len=max_len)
    for i, b in enumerate(items):
        _int(b, f"{field}[{i}]", 0, 255)


def _object(v: Any, field: str) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise SchemaError(field, f"must be an object, got {_show(v)}")
    return dict(v)


def _list(v: Any, field: str, length: int | None = None, max_len: int = MAX_COUNT) -> list[Any]:
    if not isinstance(v, list):
        raise SchemaError(field, f"must be a list, got {_show(v)}")
    if length is not None and len(v) != length:
        raise SchemaError(field, f"must hold {length} items, got {len(v)}")
    if len(v) > max_len:
        raise SchemaError(field, f"must hold at most {max_len} items, got {len(v)}")
    return v


def _known(obj: dict[str, Any], field: str, allowed: tuple[str, ...]) -> None:
    for key in obj:
        if key not in allowed:
            raise SchemaError(f"{field}.{key}", f"is not a known field (expected {', '.join(allowed)})")


def _ranks(keys: set[str]) -> str:
    shown = sorted(keys, key=lambda k: (len(k), k))  # "2" before "10"
    text = ", ".join(repr(k if len(k) <= 20 else k[:20] + "...") for k in shown[:8])
    return f"[{text}{', ...' if len(shown) > 8 else ''}]"


def _show(v: Any) -> str:
    """A short description of a JSON value for a message (never a 10,000-item list, never a huge int's digits)."""
    if isinstance(v, bool) or v is None:
        return "true" if v is True else "false" if v is False else "null"
    if isinstance(v, int):
        return str(v) if v.bit_length() <= 128 else f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:40] + "...")
    if isinstance(v, list):
        return f"a list of {len(v)} items"
    if isinstance(v, dict):
        return f"an object with {len(v)} fields"
    return type(v).__name__
