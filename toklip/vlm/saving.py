"""A VLM folder: ``config.json`` (:class:`~toklip.vlm.config.VLMConfig`) + ``model.safetensors`` holding what
trained (the projector; the LoRA adapters or the whole LLM when it trained) + ``toklip.safetensors`` and
``toklip.json`` (the TokLIP's weights and config, read back by ``toklip.load``) when the TokLIP has no source to
rebuild it from.

The frozen parts are not copied: the TokLIP and the base LLM are rebuilt from the sources config.json names
(``load_vlm(..., llm=..., tokenizer=...)`` points at moved ones). A training checkpoint may hold the whole state
in ``model.safetensors``; only the saved groups' tensors are read from it. Safetensors and JSON only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import CheckpointError, ConfigError
from toklip.vlm.config import VLMConfig, key_group

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKLIP_WEIGHTS, TOKLIP_CONFIG = "toklip.safetensors", "toklip.json"  # a TokLIP without a source to rebuild from
TOKLIP_PREFIX = "features.toklip."


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared storage (tied embeddings): each tensor on its own, contiguous, on the CPU
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_vlm(vlm: Any, directory: str | Path, *, state: dict[str, Tensor] | None = None,
             full_state: bool = False) -> Path:
    """Write the VLM folder. ``state`` replaces ``vlm.state_dict()`` (the full state a training checkpoint
    gathers); ``full_state=True`` keeps every tensor in model.safetensors (what a strict resume reads)."""
    import json

    from safetensors.torch import save_file

    from toklip import __version__
    from toklip.core.io import atomic_write, atomic_write_text
    from toklip.weights.saved import self_contained_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = vlm.state_dict() if state is None else state
    groups = set(vlm.config.saved)
    chosen = {k: v for k, v in state.items() if full_state or key_group(k) in groups}
    for group in groups:
        if not any(key_group(k) == group for k in chosen):
            raise CheckpointError(f"the VLM has no {group} tensors to save (state of {len(state)} tensors)")
    tensors = _tensors(chosen)
    metadata = {"format": "pt", "toklip_version": __version__, "saved": ",".join(vlm.config.saved)}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata=metadata))
    if vlm.config.tokenizer.get("source") is None:  # flat files: a checkpoint folder holds no sub-folders
        sub = _tensors({k[len(TOKLIP_PREFIX):]: v for k, v in state.items() if k.startswith(TOKLIP_PREFIX)})
        atomic_write(directory / TOKLIP_WEIGHTS, lambda p: save_file(sub, str(p), metadata=metadata))
        self_contained_config(vlm.features.toklip).to_json(directory / TOKLIP_CONFIG)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(vlm.config.to_dict(), indent=2) + "\n")  # last
    return directory


def is_vlm_folder(path: str | Path) -> bool:
    from toklip.core.io import read_json

    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        return False
    try:
        data = read_json(file, "VLM config")
    except ConfigError:
        return False
    return isinstance(data, dict) and data.get("format") == "toklip-vlm"


def resolve_vlm_folder(path: str | Path) -> Path:
    """A VLM folder, or a training run folder (its newest checkpoint) -> the VLM folder."""
    from toklip.train import checkpoint as ckpt

    path = Path(path).expanduser()
    if is_vlm_folder(path):
        return path
    if path.is_dir():
        found = ckpt.find_checkpoint(path, ckpt.LATEST)
        if found is not None and is_vlm_folder(found):
            return found
    raise ConfigError(f"{str(path)!r} is neither a VLM folder (config.json with \"format\": \"toklip-vlm\", written by "
                      "VLM.save_pretrained) nor a training run with a VLM checkpoint (toklip train with task.name=vlm)")


def read_vlm_config(directory: str | Path) -> VLMConfig:
    from toklip.core.io import read_json

    file = Path(directory) / CONFIG_NAME
    return VLMConfig.from_dict(read_json(file, "VLM config"), where=str(file))


def load_vlm(directory: str | Path, *, llm: str | Path | None = None, tokenizer: Any = None,
             device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """Rebuild a saved VLM (a folder from ``save_pretrained``, or a training run: its newest checkpoint). ``llm`` /
    ``tokenizer`` replace the sources config.json names (a moved folder). Returns the model in eval mode."""
    from safetensors import SafetensorError, safe_open

    import toklip
    from toklip.vlm.model import assemble, resolve_tokenizer

    folder = resolve_vlm_folder(directory)
    cfg = read_vlm_config(folder)
    ref = dict(cfg.tokenizer)
    if tokenizer is not None:
        toklip_model, ref = resolve_tokenizer(tokenizer)
    elif ref.get("source") is None:
        missing = [n for n in (TOKLIP_WEIGHTS, TOKLIP_CONFIG) if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder} names no TokLIP source and lacks {' and '.join(missing)} (its weights)")
        toklip_model = toklip.load(folder / TOKLIP_WEIGHTS, config=folder / TOKLIP_CONFIG)
    else:
        toklip_model, _ = resolve_tokenizer(ref["source"], pretrained=ref.get("pretrained", False))
    llm_source = llm if llm is not None else cfg.llm
    if llm is None and not Path(cfg.llm).is_absolute() and (folder / cfg.llm).is_dir():
        llm_source = folder / cfg.llm
    if llm is None and Path(cfg.llm).is_absolute() and not Path(cfg.llm).is_dir():
        raise ConfigError(f"the language model folder {cfg.llm} named in {folder / CONFIG_NAME} does not exist; "
                          "pass load_vlm(..., llm='/new/path') to point at it")
    vlm = assemble(toklip_model, ref, llm_source, projector=cfg.projector, projector_kwargs=cfg.projector_kwargs,
                   feature_layer=cfg.feature_layer, features=cfg.features, template=cfg.template,
                   image_token=cfg.image_token, dtype=dtype)
    _check_sizes(cfg, vlm.config, folder)
    if cfg.lora:
        vlm.apply_lora(cfg.lora)
    vlm.config.llm_trained = cfg.llm_trained
    file = folder / WEIGHTS_NAME
    expected = {k for k in vlm.state_dict() if key_group(k) in set(cfg.saved)}
    try:
        with safe_open(str(file), framework="pt") as f:
            missing = sorted(expected - set(f.keys()))
            if missing:
                raise CheckpointError(f"{file} lacks {len(missing)} tensor(s) of the saved groups {cfg.saved}, e.g. "
                                      f"{missing[:3]}")
            tensors = {k: f.get_tensor(k) for k in sorted(expected)}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file} is unreadable (missing, truncated or not safetensors): {e}") from e
    try:
        result = vlm.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{file} does not fit the rebuilt model (another LLM or tokenizer?): "
                              f"{str(e)[:400]}") from e
    if result.unexpected_keys:
        raise CheckpointError(f"{file}: unexpected tensors {result.unexpected_keys[:3]}")
    if device is not None:
        vlm.to(device)
    return vlm.eval()


def _check_sizes(saved: VLMConfig, built: VLMConfig, folder: Path) -> None:
    for name in ("feature_dim", "hidden_size", "num_image_tokens"):
        a, b = getattr(saved, name), getattr(built, name)
        if a is not None and a != b:
            raise CheckpointError(f"{folder} was saved with {name}={a}, but the rebuilt TokLIP/LLM have {b}: the "
                                  "sources config.json names changed; pass the original llm=/tokenizer=")
