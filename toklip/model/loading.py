"""``toklip.load``: the one way a TokLIP model is loaded. ``build(pretrained=...)``, ``from_pretrained``,
``load_official``, serve, eval, train, tokenize, the demo and the CLI all end here.

A source is resolved to local files once (:mod:`toklip.weights.sources`), the checkpoint is read safely, the
model is built on the meta device and its shapes are checked against the checkpoint *before* any memory is
allocated (a config cannot make toklip build a 50 GB model), then the checkpoint's tensors are adopted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toklip.core.errors import CheckpointError, ConfigError, WeightsNotFoundError
from toklip.model.config import TokLIPConfig
from toklip.weights.official import (
    OPTIONAL_OFFICIAL_KEYS,
    infer_preset,
    is_official_state,
    official_state_to_toklip,
    official_to_toklip_key,
)
from toklip.weights.readers import load_state_dict_strict, unwrap_state_dict
from toklip.weights.sources import Source, resolve_source, saved_files

log = logging.getLogger("toklip")

# A random-init model described by a config file is counted on the meta device first; above this many
# parameters it is refused (TokLIP-L-384 has 1.2 B). Pass max_params= to allow larger ones deliberately.
MAX_RANDOM_INIT_PARAMS = 20_000_000_000


def load(
    source: str | Path | Mapping[str, Any] | TokLIPConfig,
    *,
    config: str | Path | Mapping[str, Any] | TokLIPConfig | None = None,
    weights: str | Path | None = None,
    random_weights: bool = False,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    max_params: int = MAX_RANDOM_INIT_PARAMS,
) -> Any:
    """Load a TokLIP from a preset name (its released weights, or random ones if it has none), a
    ``save_pretrained`` folder or hub repo id, a config (file, dict or TokLIPConfig; random weights unless
    ``weights=``), an official TokLIP release file or a safetensors checkpoint (``config=`` for sizes that
    cannot be inferred). ``random_weights=True`` skips a preset's release. Returns the model in eval mode."""
    from toklip.model.factory import resolve_config

    if isinstance(source, (Mapping, TokLIPConfig)):
        src = Source("config", None, None)
        cfg = resolve_config(source)
    else:
        src = resolve_source(source, revision=revision)
        cfg = None
    if src.kind == "folder" and (weights is not None or config is not None):
        raise ConfigError(f"{source} is a saved model with its own config and weights; drop --weights / weights= "
                          "and config=")
    weights_path = _local_file(weights, "weights") if weights is not None else None
    if src.kind == "folder":
        return from_pretrained(source, revision=revision, device=device, dtype=dtype)
    elif src.kind == "checkpoint":
        if weights_path is not None:
            raise ConfigError(f"{source} is already a checkpoint; to load weights into an architecture, pass the "
                              "architecture (a preset name or config.json) as the source")
        weights_path = src.weights
    elif src.kind == "config" and cfg is None:
        cfg = resolve_config(src.config)
    elif src.kind == "preset":
        cfg = resolve_config(src.config)
        if weights_path is None and not random_weights:
            from toklip.model.factory import preset_release

            weights_path = preset_release(str(src.config))
            if weights_path is None:
                log.warning("preset %s has no released weights: random init", src.config)
    if config is not None:
        if src.kind != "checkpoint":
            raise ConfigError("config= describes the architecture of a checkpoint file; this source has its own")
        cfg = resolve_config(config)
    return load_weights(cfg, weights_path, device=device, dtype=dtype, max_params=max_params)


def load_weights(
    cfg: TokLIPConfig | None,
    weights: Path | None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    max_params: int = MAX_RANDOM_INIT_PARAMS,
) -> Any:
    """Build ``cfg`` and load ``weights`` strictly (an official TokLIP file or a toklip safetensors file); with
    ``weights=None`` a random-init build, counted on the meta device first. ``cfg=None``: the size is inferred
    from an official release file."""
    from toklip.model.factory import build_from_config, resolve_config
    from toklip.weights import read_checkpoint

    if weights is None:
        if cfg is None:
            raise ConfigError("nothing to load: give a config or a checkpoint")
        check_size(cfg, max_params)
        return build_from_config(cfg, device=device, dtype=dtype)
    state = unwrap_state_dict(read_checkpoint(weights))
    if is_official_state(state):
        if cfg is None:
            cfg = resolve_config(infer_preset(state))
        state = official_state_to_toklip(state)
    elif not any(k.startswith("token_encoder.") for k in state):
        raise CheckpointError(f"{weights} is neither a toklip nor an official TokLIP checkpoint "
                              "(no token_encoder.* or visual.trunk.* tensors)")
    elif cfg is None:
        raise ConfigError(f"{weights} is a toklip checkpoint without its config: pass config='config.json' (the "
                          "file save_pretrained wrote beside it) or load the saved folder instead")
    cfg = cfg.without_pretrained()  # the checkpoint has every tensor: components must not read their own
    # Build on the meta device and adopt the checkpoint's tensors: nothing is allocated until the shapes match,
    # no random init of ~1.2B parameters, and no second copy in memory.
    model = build_from_config(cfg, device="meta")
    allow = _optional_keys(model)
    load_state_dict_strict(model, state, source=str(weights), allow_missing=allow, assign=True)
    if not materialize_missing(model):  # some module cannot be re-initialised in place: build for real
        model = build_from_config(cfg)
        load_state_dict_strict(model, state, source=str(weights), allow_missing=allow)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def check_size(cfg: TokLIPConfig, max_params: int = MAX_RANDOM_INIT_PARAMS) -> int:
    """Count a config's parameters on the meta device (no memory) and refuse absurd sizes clearly."""
    from toklip.model.factory import build_from_config

    n = sum(p.numel() for p in build_from_config(cfg.without_pretrained(), device="meta").parameters())
    if n > max_params:
        raise ConfigError(
            f"this config describes a model with {n / 1e9:.1f} B parameters (limit {max_params / 1e9:.0f} B): "
            "a mistyped size (embed_dim, width, depth)? Pass max_params= to build it deliberately"
        )
    return n


def _local_file(value: str | Path, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} file {str(value)!r} does not exist")
    return path


def _optional_keys(model: nn.Module) -> set[str]:
    keys = {official_to_toklip_key(k) for k in OPTIONAL_OFFICIAL_KEYS}
    # fusion layers are toklip's own: an official file never has them, a toklip file always does
    keys.update(k for k in model.state_dict() if k.startswith("fusion."))
    return keys


def materialize_missing(model: nn.Module) -> bool:
    """Give real storage and fresh init to whatever a meta-device model did not get from the checkpoint.

    Returns False when some module cannot be re-initialised in place (no ``reset_parameters``, or a
    non-persistent buffer computed at construction), so the caller can build normally instead."""
    persistent = set(model.state_dict())
    for name, buf in model.named_buffers():
        if buf.is_meta and name not in persistent:
            return False
    with torch.no_grad():  # own, aligned storage: results must not depend on where the checkpoint came from
        for t in [*model.parameters(), *model.buffers()]:
            if not t.is_meta:
                t.data = t.data.clone(memory_format=torch.contiguous_format)
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if not any(t.is_meta for t in own):
            continue
        if not hasattr(module, "reset_parameters"):
            return False
        module.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            module.reset_parameters()
    return True


# ---------------------------------------------------------------- the familiar names, all through load()
def from_pretrained(
    source: str | Path,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Load a model saved with ``save_pretrained`` from a folder or a hub repo id (HF's convention)."""
    from toklip.model.factory import resolve_config

    src = saved_files(source, revision=revision)
    return load_weights(resolve_config(src.config).without_pretrained(), src.weights, device=device, dtype=dtype)


def load_official(
    checkpoint: str | Path,
    config: str | Path | Mapping[str, Any] | TokLIPConfig | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Build a TokLIP and load an official release file into it (raw training checkpoints with ``module.``
    keys and optimizer state, plain state dicts, safetensors). ``config`` is a preset name, a toklip config or
    the official-architecture ``config.json`` of the parity fixtures; without it the size is inferred from
    ``pos_embed`` (TokLIP-S-256 or TokLIP-L-384)."""
    from toklip.model.factory import resolve_config

    return load_weights(None if config is None else resolve_config(config), _local_file(checkpoint, "checkpoint"),
                        device=device, dtype=dtype)


def convert_official(checkpoint: str | Path, out_dir: str | Path, config: Any = None) -> Path:
    """Official release file -> ``out_dir/model.safetensors`` + ``config.json`` (optimizer state dropped)."""
    return load_official(checkpoint, config=config).save_pretrained(out_dir)


# ---------------------------------------------------------------- command-line flavour (serve, eval, tokenize)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """'auto' is the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device torch knows (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for CUDA, but torch sees no GPU; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    source: str,
    *,
    weights: str | None = None,
    config: str | None = None,
    random_weights: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> Any:
    """``--model`` / ``--weights`` / ``--config`` / ``--device`` / ``--dtype`` of a command to a model in eval mode. The VQ stays
    in float32 whatever ``--dtype`` says: its codebook search and decoder are where reduced precision shows."""
    dev = resolve_device(device)
    try:
        model = load(source, weights=weights, config=config, random_weights=random_weights)
    except ConfigError as e:
        if Path(source).expanduser().is_file() and Path(source).suffix != ".json" and config is None:
            raise ConfigError(f"{e}\n  describe the model with --model CONFIG.json --weights {source}") from e
        raise
    model = model.to(device=dev, dtype=resolve_dtype(dtype, dev))
    model.vq.float()
    return model.eval()
