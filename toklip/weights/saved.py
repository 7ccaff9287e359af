"""toklip's own weight format: a folder with ``model.safetensors`` and ``config.json`` (the HF convention).

``toklip.from_pretrained(dir_or_repo_id)`` (:mod:`toklip.model.loading`) reads it back from a local folder or
a hub repo; nothing from a checkpoint is ever executed, and loading is strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


from toklip.weights.sources import CONFIG_NAME, WEIGHTS_NAME


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


def push_to_hub(model: Any, repo_id: str, *, private: bool = False, commit_message: str = "Upload TokLIP") -> Any:
    """Save to a temporary folder and upload it with huggingface_hub (needs network and a token)."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
