"""Safe checkpoint reading, strict loading with readable reports, and the official TokLIP key mapping.

Nothing here unpickles arbitrary objects: ``.pt`` files go through ``torch.load(weights_only=True)`` with the
smallest allowlist an official release needs (numpy scalars for the learning rates the training loop stored).
"""

from __future__ import annotations

import _codecs
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from toklip.errors import CheckpointError, ConfigError

# Globals an official TokLIP training checkpoint needs besides tensors: the cosine schedule stored numpy
# float64 learning rates in optimizer.param_groups (pickle imports numpy.core.multiarray.scalar, numpy.dtype,
# _codecs.encode). Both numpy 1 and numpy 2 spellings are allowed; nothing that can run code is.
_NUMPY_SCALAR = np._core.multiarray.scalar  # type: ignore[attr-defined]
SAFE_GLOBALS: list[Any] = [
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
    _codecs.encode,
]

# official key prefix -> toklip key prefix (first match wins; order matters)
OFFICIAL_PREFIXES: list[tuple[str, str]] = [
    ("visual.trunk.vq.", "vq."),
    ("visual.trunk.vq_table.", "projector.fc1."),
    ("visual.trunk.vq_mapping.", "projector.fc2."),
    ("visual.trunk.", "token_encoder."),
    ("text.", "text."),
    ("logit_scale", "logit_scale"),
    ("logit_bias", "logit_bias"),
]
# Present in a fresh official model but expected absent from the released files (training removes it).
OPTIONAL_OFFICIAL_KEYS = {"logit_bias"}


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def read_checkpoint(path: str | Path) -> Any:
    """Read a .safetensors file or a PyTorch checkpoint safely (tensors, containers and numpy scalars only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file (truncated?): {e}") from e
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights_only" in text or "Unsupported" in text or "global" in text.lower():
            first = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported" in ln), text[:200])
            raise CheckpointError(
                f"refused to load {path}: it contains pickled Python objects beyond tensors ({first}). "
                "toklip never unpickles arbitrary objects, since that can run code. If you trust the file, "
                "re-save its tensors (state_dict) with safetensors and load that."
            ) from e
        raise CheckpointError(f"{path} is not a valid PyTorch checkpoint: {text[:300]}") from e
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, KeyError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or not a PyTorch/safetensors file): "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from e


def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """The state dict inside a training checkpoint (``state_dict``/``model``/``ema``), with ``module.`` stripped."""
    sd = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"no state dict found in the checkpoint (top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"the state dict has non-tensor entries, e.g. {bad[:3]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _report(title: str, keys: list[str], limit: int = 12) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}): " + ", ".join(keys[:limit]) + more


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    allow_missing: set[str] = frozenset(),
    assign: bool = False,
) -> list[str]:
    """Load every key with matching shapes, or raise a CheckpointError listing what differs. Returns the
    allowed keys that were missing. ``assign=True`` adopts the checkpoint tensors (for meta-device models)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    hard_missing = [k for k in missing if k not in allow_missing]
    if hard_missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not match the model:"]
        if hard_missing:
            lines.append(_report("missing", hard_missing))
        if unexpected:
            lines.append(_report("unexpected", unexpected))
        if mismatched:
            lines.append(_report("shape mismatch", mismatched))
        lines.append("  (wrong config, image size or preset? toklip never loads partially by shape filtering)")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(dict(state), strict=False, assign=assign)
    return [k for k in missing if k in allow_missing]


def official_to_toklip_key(key: str) -> str:
    for old, new in OFFICIAL_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"key {key!r} is not part of the official TokLIP layout")


def toklip_to_official_key(key: str) -> str:
    for old, new in OFFICIAL_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    raise CheckpointError(f"key {key!r} has no official TokLIP counterpart")


def official_state_to_toklip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    unknown = [k for k in state if not any(k.startswith(o) for o, _ in OFFICIAL_PREFIXES)]
    if unknown:
        raise CheckpointError(
            "this does not look like an official TokLIP checkpoint; unexpected keys: " + ", ".join(unknown[:8])
        )
    return {official_to_toklip_key(k): v for k, v in state.items()}


def infer_preset(state: Mapping[str, Tensor]) -> str:
    """Which released TokLIP a full-size official state dict is, from its position-embedding length."""
    pos = state.get("visual.trunk.pos_embed")
    if pos is None:
        raise ConfigError("cannot tell the model size: no visual.trunk.pos_embed; pass config=...")
    n, width = pos.shape[1], pos.shape[2]
    if width == 1152 and n == 256:
        return "toklip-s-256"
    if width == 1152 and n == 576:
        return "toklip-l-384"
    raise ConfigError(
        f"pos_embed {tuple(pos.shape)} matches no released TokLIP (S-256: 256x1152, L-384: 576x1152); "
        "pass config='config.json' describing this model"
    )


def load_official(
    checkpoint: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build a TokLIP and load an official release file into it.

    Accepts the raw training checkpoints the official repo publishes (``{'epoch', 'state_dict': {'module.'...},
    'optimizer', ...}``), plain state dicts and safetensors. ``config`` is a preset name, a toklip config, or
    the official-architecture ``config.json`` format of the parity fixtures (any size); without it the size is
    inferred from ``pos_embed`` (TokLIP-S-256 or TokLIP-L-384).
    """
    from toklip.factory import build_from_config, resolve_config

    state = unwrap_state_dict(read_checkpoint(checkpoint))
    cfg = resolve_config(config if config is not None else infer_preset(state))
    mapped = official_state_to_toklip(state)
    # Build on the meta device and adopt the checkpoint's tensors: no random init of ~1.2B parameters and no
    # second copy in memory. Falls back to a normal build if a module cannot be materialised that way.
    model = build_from_config(cfg, device="meta")
    load_state_dict_strict(model, mapped, source=str(checkpoint), allow_missing=_optional_toklip_keys(model),
                           assign=True)
    if not materialize_missing(model):
        model = build_from_config(cfg)
        load_state_dict_strict(model, mapped, source=str(checkpoint), allow_missing=_optional_toklip_keys(model))
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


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


def _optional_toklip_keys(model: nn.Module) -> set[str]:
    keys = {official_to_toklip_key(k) for k in OPTIONAL_OFFICIAL_KEYS}
    # fusion layers are toklip's own: an official file never has them
    keys.update(k for k in model.state_dict() if k.startswith("fusion."))
    return keys


def convert_official(checkpoint: str | Path, out_dir: str | Path, config: Any = None) -> Path:
    """Official release file -> ``out_dir/model.safetensors`` + ``config.json`` (optimizer state dropped)."""
    model = load_official(checkpoint, config=config)
    return model.save_pretrained(out_dir)
