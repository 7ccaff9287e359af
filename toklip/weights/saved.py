"""toklip's own weight format: a folder with ``model.safetensors`` and ``config.json`` (the HF convention).

``toklip.from_pretrained(dir_or_repo_id)`` reads a local folder or a hub repo; nothing from a checkpoint is
ever executed, and loading is strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from toklip.core.errors import CheckpointError, WeightsNotFoundError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: store each tensor on its own, contiguous, on CPU
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_pretrained(model: Any, directory: str | Path, *, state: dict[str, torch.Tensor] | None = None) -> Path:
    """``model.safetensors`` + ``config.json``; ``state`` replaces ``model.state_dict()`` (e.g. the full state a
    training checkpoint gathers from sharded ranks)."""
    from safetensors.torch import save_file

    from toklip import __version__
    from toklip.core.io import atomic_write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(model.state_dict() if state is None else state)
    metadata = {"format": "pt", "toklip_version": __version__}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata=metadata))
    self_contained_config(model).to_json(directory / CONFIG_NAME)
    return directory


def self_contained_config(model: Any) -> Any:
    """The model's config with no reference to outside files: weight sources dropped, and a component that
    was described by a file (``config=...``) written out through its ``config_kwargs`` (the keyword arguments
    that rebuild its architecture), so a saved folder never depends on files that may move."""
    cfg = model.config.without_pretrained()
    for ref, module in ((cfg.vq, model.vq), (cfg.projector, model.projector), (cfg.fusion, model.fusion)):
        arch = getattr(module, "config_kwargs", None)
        if ref is not None and isinstance(arch, dict):
            ref.kwargs = {**{k: v for k, v in ref.kwargs.items() if k != "config"}, **arch}
    return cfg


def _locate(source: str | Path, filename: str, revision: str | None) -> Path:
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise WeightsNotFoundError(f"{local} has no {filename}; save_pretrained() writes {WEIGHTS_NAME} + {CONFIG_NAME}")
        return path
    if local.exists() or str(source).count("/") != 1:
        raise WeightsNotFoundError(
            f"{str(source)!r} is neither a folder written by save_pretrained() nor a hub repo id ('owner/name')"
        )
    from toklip.weights.hub import hub_file

    return hub_file(str(source), filename, revision=revision, what="TokLIP " + filename)


def from_pretrained(
    source: str | Path,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Load a model saved with ``save_pretrained`` from a folder or a hub repo id."""
    from toklip.model.factory import build_from_config
    from toklip.model.config import TokLIPConfig

    cfg = TokLIPConfig.from_json(_locate(source, CONFIG_NAME, revision))
    model = build_from_config(cfg.without_pretrained())
    load_checkpoint_into(model, _locate(source, WEIGHTS_NAME, revision))
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def load_checkpoint_into(model: nn.Module, path: str | Path) -> None:
    """Load a toklip safetensors file, or an official TokLIP file (detected by its key names), strictly."""
    from toklip.checkpoints import (
        _optional_toklip_keys,
        load_state_dict_strict,
        official_state_to_toklip,
        read_checkpoint,
        unwrap_state_dict,
    )

    state = unwrap_state_dict(read_checkpoint(path))
    if any(k.startswith("visual.trunk.") for k in state):
        state = official_state_to_toklip(state)
        load_state_dict_strict(model, state, source=str(path), allow_missing=_optional_toklip_keys(model))
        return
    if not any(k.startswith("token_encoder.") for k in state):
        raise CheckpointError(f"{path} is neither a toklip nor an official TokLIP checkpoint")
    load_state_dict_strict(model, state, source=str(path))


def push_to_hub(model: Any, repo_id: str, *, private: bool = False, commit_message: str = "Upload TokLIP") -> Any:
    """Save to a temporary folder and upload it with huggingface_hub (needs network and a token)."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
