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
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from toklip.core.errors import CheckpointError, ConfigError

STEP_PREFIX = "step_"
LATEST = "latest"
STATE_NAME = "train_state.json"
OPTIM_NAME = "optimizer.safetensors"
MODEL_PREFIX = "model."  # a task's wrapped module holds its model as `.model`
MAX_POINTER_BYTES = 256  # `latest` holds one folder name
MAX_STATE_BYTES = 512 * 2**20  # train_state.json: the config and every rank's RNG state, far below this
_STEP_NAME = re.compile(rf"{STEP_PREFIX}(\d{{1,16}})")


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def step_of(name: str) -> int | None:
    """The step a ``step_XXXXXXXX`` folder name stands for; None for any other name (``step_8.bak``, ``latest``)."""
    m = _STEP_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def _step_folders(root: Path) -> list[Path]:
    """``step_*`` folders, oldest first by step number (not by name: step 100000000 sorts after 99999999)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p.name) is not None and p.is_dir()]
    return sorted(found, key=lambda p: (step_of(p.name), p.name))


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (a folder is finished once its train_state.json exists)."""
    return [p for p in _step_folders(root) if (p / STATE_NAME).is_file()]


def run_checkpoint(path: str | Path, *, marker: str) -> Path:
    """A training run's out_dir -> its newest finished checkpoint folder; any other path is returned as it is.

    ``marker`` is the file a model folder holds (``config.json`` for TokLIP, ``generator.json`` for a
    generator): a folder with it is a model, not a run."""
    path = Path(path).expanduser()
    if path.is_dir() and not (path / marker).is_file() and (path / "checkpoints").is_dir():
        latest = find_checkpoint(path, LATEST)
        if latest is None:
            raise ConfigError(f"{path} is a training folder with no finished checkpoint yet")
        return latest
    return path


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
    name, problem = _read_pointer(pointer)
    if name is not None:
        cand = root / name
        if cand.is_dir():
            _require_complete(cand, f"{pointer} names {cand.name}, but")
            return cand
        problem = f"names {name}, which is not a folder there"
    folders = _step_folders(root)
    if problem is not None:
        instead = f"resuming from the newest checkpoint folder, {folders[-1].name}" if folders else "it is ignored"
        warnings.warn(f"{pointer} {problem}: {instead}", stacklevel=2)
    if folders:
        _require_complete(folders[-1], f"the newest checkpoint folder {folders[-1]} is damaged:")
        return folders[-1]
    return None


def _read_pointer(pointer: Path) -> tuple[str | None, str | None]:
    """-> (the folder name ``latest`` holds, or None; what is wrong with it, or None when it is fine or absent).

    ``latest`` is rewritten atomically, so one that is not a short UTF-8 ``step_*`` name was damaged afterwards:
    the caller falls back to the newest folder (the one ``latest`` names whenever the write completed)."""
    if not pointer.exists() and not pointer.is_symlink():
        return None, None
    if not pointer.is_file():
        return None, "is not a file"
    try:
        with open(pointer, "rb") as f:
            raw = f.read(MAX_POINTER_BYTES + 1)
    except OSError as e:
        return None, f"is unreadable ({e.strerror or e})"
    if len(raw) > MAX_POINTER_BYTES:
        return None, f"is longer than {MAX_POINTER_BYTES} bytes, so it is not a folder name"
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "is not UTF-8 text (a damaged file)"
    if step_of(name) is None:
        return None, f"does not name a {STEP_PREFIX}* folder (it holds {name[:60]!r})"
    return name, None


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
    save_model: Callable[[Path, dict[str, Tensor]], None],
    model_state: dict[str, Tensor],
    optim_tensors: dict[str, Tensor],
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically (temp folder + rename), point ``latest`` at it, prune old ones."""
    from safetensors.torch import save_file

    from toklip.core.io import atomic_write_text

    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        save_model(tmp, model_state)  # the task's model folder (TokLIP: what toklip.from_pretrained reads)
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
    """-> (model state, optimizer state dict, train state). A damaged folder is a CheckpointError that names the
    file and the field, and the newest earlier checkpoint that could be resumed instead; nothing falls back silently
    (resuming from an older step without being asked would hide the damage)."""
    from toklip.weights.saved import WEIGHTS_NAME

    try:
        state = read_train_state(path)
        model_state = _read_safetensors(path / WEIGHTS_NAME, "model weights")
        optim_tensors = _read_safetensors(path / OPTIM_NAME, "optimizer state")
        try:
            optim = unflatten_optimizer(optim_tensors, state["optimizer"])
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path / STATE_NAME}: the optimizer section is malformed ({e!r})") from e
    except CheckpointError as e:
        raise CheckpointError(f"{e}{_earlier_hint(path)}") from e
    return model_state, optim, state


def read_train_state(path: Path) -> dict[str, Any]:
    """A checkpoint folder's train_state.json, checked against its schema (toklip.train.state_schema)."""
    from toklip.train.state_schema import SchemaError, missing_fields, validate_train_state

    file = path / STATE_NAME
    try:
        size = file.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{file} is unreadable: {e}") from e
    if size > MAX_STATE_BYTES:
        raise CheckpointError(f"{file} is {size} bytes, more than a training state can hold ({MAX_STATE_BYTES}): "
                              "it is not one")
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON and int-size errors
        raise CheckpointError(f"{file} is unreadable: {str(e)[:300] or type(e).__name__}") from e
    missing = missing_fields(state)
    if missing:
        raise CheckpointError(f"{file} is not a training state: it lacks {', '.join(missing)}")
    try:
        validate_train_state(state)
    except SchemaError as e:
        raise CheckpointError(f"{file} is damaged or was edited: {e}") from None
    named = step_of(path.name)
    if named is not None and named != state["step"]:
        raise CheckpointError(f"{file} is damaged or was edited: field 'step' is {state['step']}, but the folder "
                              f"{path.name} was written at step {named}")
    return state


def _earlier_hint(path: Path) -> str:
    """A sentence naming the newest earlier checkpoint whose train_state.json is valid ('' when there is none)."""
    here = step_of(path.name)
    if here is None:
        return ""
    for older in reversed([p for p in complete_checkpoints(path.parent) if step_of(p.name) < here]):
        try:
            read_train_state(older)
        except CheckpointError:
            continue
        return (f". The earlier checkpoint {older} has a valid {STATE_NAME}: to continue from it, pass --resume "
                f"{older} (or move {path.name} out of {path.parent})")
    return ""


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


def load_model_state(wrapped: nn.Module, model_state: dict[str, Tensor], *, trained_only: bool = False) -> None:
    """Load a checkpoint's model tensors, strictly. ``trained_only``: the checkpoint holds the trained tensors
    alone (a task whose frozen parts are rebuilt from their sources, as the vlm task's TokLIP and base LLM): every
    parameter that trains must be there, and nothing the model lacks."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    sd = {MODEL_PREFIX + k: v for k, v in model_state.items()}
    if trained_only:
        trained = {_plain_name(n) for n, p in wrapped.named_parameters() if p.requires_grad}
        missing = sorted(trained - set(sd))
        if missing:
            raise CheckpointError(f"the checkpoint lacks {len(missing)} trained tensor(s) of this model, e.g. "
                                  f"{missing[0][len(MODEL_PREFIX):]!r} (changed config, or another stage?)")
    try:
        set_model_state_dict(wrapped, sd, options=_options(strict=not trained_only))
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"the checkpoint does not fit this model (changed config?): {str(e)[:500]}") from e


def _plain_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (DDP's ``module.``, activation checkpointing's), as
    ``get_model_state_dict`` names it."""
    name = name.removeprefix("module.")
    for wrapper in ("_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def load_optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    try:
        set_optimizer_state_dict(wrapped, optimizer, osd, options=_options())
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"the optimizer state does not fit this model (changed config?): {str(e)[:500]}") from e
