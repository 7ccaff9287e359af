"""Training checkpoints: one folder per step, written whole or not at all.

``<out>/checkpoints/step_00001000/`` holds ``model.safetensors`` + ``config.json`` (a ``save_pretrained`` folder:
``toklip.from_pretrained`` loads it), ``optimizer.safetensors`` (AdamW moments, keyed by parameter name) and
``train_state.json`` (step, optimizer param groups, schedule, GradScaler, every rank's RNG and data position,
the resolved config). Each folder is written under a temporary name and renamed into place, then ``latest`` is
rewritten atomically; only the newest ``keep_last`` folders are kept. Nothing is unpickled on resume.
Model and optimizer states go through ``torch.distributed.checkpoint.state_dict`` so plain, DDP and FSDP2
models all save full (unsharded) tensors and load them back.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from toklip.errors import CheckpointError

STEP_PREFIX = "step_"
LATEST = "latest"
STATE_NAME = "train_state.json"
OPTIM_NAME = "optimizer.safetensors"
MODEL_PREFIX = "model."  # StudentForward holds the TokLIP model as `.model`


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (a folder is finished once its train_state.json exists)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(out_dir: str | Path, resume: str) -> Path | None:
    """``resume`` is 'latest' (None when there is none yet) or a checkpoint folder.

    Folders are renamed into place whole, so a ``step_*`` folder without ``train_state.json`` never comes from
    an interrupted write (those stay ``.step_*.tmp`` and are ignored): when ``latest`` names one, or it is the
    newest, it was damaged afterwards, and resuming silently from an older step would hide that."""
    if resume != LATEST:
        path = Path(resume).expanduser()
        if path.is_dir() and (path / STATE_NAME).is_file():
            return path
        if path.is_dir():
            raise CheckpointError(
                f"--resume {resume!r} is not a complete checkpoint: {STATE_NAME} is missing; "
                "resume from another step_* folder or use 'latest'"
            )
        raise CheckpointError(f"--resume {resume!r} is not a checkpoint folder (it needs {STATE_NAME}); use 'latest'")
    root = checkpoint_root(out_dir)
    pointer = root / LATEST
    name = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    if name.startswith(STEP_PREFIX) and "/" not in name and "\\" not in name:
        cand = root / name
        if cand.is_dir():
            _require_complete(cand, f"{pointer} names {cand.name}, but")
            return cand
    found = root.iterdir() if root.is_dir() else ()
    folders = sorted(p for p in found if p.is_dir() and p.name.startswith(STEP_PREFIX))
    if folders:
        _require_complete(folders[-1], f"the newest checkpoint folder {folders[-1]} is damaged:")
        return folders[-1]
    return None


def _require_complete(path: Path, what: str) -> None:
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(
            f"{what} {STATE_NAME} is missing from it; delete that folder to resume from an earlier checkpoint, "
            "or pass --resume with another step_* folder"
        )


# ---------------------------------------------------------------------------------------------- state dicts
def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_model_state(wrapped: nn.Module) -> dict[str, Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(wrapped, options=_options())
    return {k[len(MODEL_PREFIX):]: v for k, v in sd.items() if k.startswith(MODEL_PREFIX)}


def full_optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, optimizer, options=_options())


def flatten_optimizer(osd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """{"state": {fqn: {k: v}}, "param_groups": [...]} -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, state in osd.get("state", {}).items():
        for k, v in state.items():
            if isinstance(v, Tensor):
                tensors[f"{fqn}::{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(fqn, {})[k] = v
    return tensors, {"param_groups": osd.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        fqn, _, k = key.rpartition("::")
        state.setdefault(fqn, {})[k] = t
    for fqn, vals in meta.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(),
                  *[int(x) if isinstance(x, (int, np.integer)) else float(x) for x in np_state[2:]]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------- write / read
def write_checkpoint(
    root: Path,
    step: int,
    *,
    model: nn.Module,
    model_state: dict[str, Tensor],
    optim_tensors: dict[str, Tensor],
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically (temp folder + rename), point ``latest`` at it, prune old ones."""
    from safetensors.torch import save_file

    from toklip.io import atomic_write_text
    from toklip.pretrained import save_pretrained

    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        save_pretrained(model, tmp, state=model_state)  # the folder toklip.from_pretrained / toklip eval read
        save_file(optim_tensors, str(tmp / OPTIM_NAME), metadata={"format": "pt"})
        (tmp / STATE_NAME).write_text(json.dumps(state), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is as readable as other outputs
        _fsync_dir(tmp)  # the folder's entries are durable before it is renamed into place
        if final.exists():  # the same step written again after a resume: replace it whole
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / LATEST, final.name + "\n")
    prune(root, keep_last, keep=final)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(folder: Path) -> None:
    """Rename out of sight first, then delete: a process killed meanwhile leaves a ``.old`` folder, never a
    ``step_*`` folder with some files gone."""
    trash = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Keep the newest ``keep_last`` finished checkpoints (and ``keep``); remove what killed writers left."""
    done = [p for p in complete_checkpoints(root) if keep is None or p.name != keep.name]
    n_keep = max(0, keep_last - (1 if keep is not None else 0))
    for old in done[: max(0, len(done) - n_keep)]:
        _remove(old)
    clean_stale(root)


def clean_stale(root: Path) -> list[Path]:
    """Delete ``.step_*.tmp`` / ``.step_*.old`` folders left by a process killed while writing or pruning."""
    stale = [*root.glob(f".{STEP_PREFIX}*.tmp"), *root.glob(f".{STEP_PREFIX}*.old")] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def read_checkpoint_dir(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """-> (model state, optimizer state dict, train state)."""
    from toklip.pretrained import WEIGHTS_NAME

    try:
        state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / STATE_NAME} is unreadable: {e}") from e
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path / STATE_NAME} is not a training state: it lacks {', '.join(missing)}")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise CheckpointError(f"{path / STATE_NAME}: 'step' must be an integer >= 0, got {state['step']!r}")
    model_state = _read_safetensors(path / WEIGHTS_NAME, "model weights")
    optim_tensors = _read_safetensors(path / OPTIM_NAME, "optimizer state")
    try:
        optim = unflatten_optimizer(optim_tensors, state["optimizer"])
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path / STATE_NAME}: the optimizer section is malformed ({e!r})") from e
    return model_state, optim, state


STATE_KEYS = ("step", "optimizer", "data")


def _read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    """Tensors from a .safetensors file (never a pickle), with a clear error when it is missing or truncated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"the checkpoint's {what} ({path}) is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's {what} ({path}) is unreadable (truncated or corrupt?): {e}") from e


def load_model_state(wrapped: nn.Module, model_state: dict[str, Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    sd = {MODEL_PREFIX + k: v for k, v in model_state.items()}
    try:
        set_model_state_dict(wrapped, sd, options=_options(strict=True))
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"the checkpoint does not fit this model (changed config?): {str(e)[:500]}") from e


def load_optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    try:
        set_optimizer_state_dict(wrapped, optimizer, osd, options=_options())
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"the optimizer state does not fit this model (changed config?): {str(e)[:500]}") from e
