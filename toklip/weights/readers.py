"""Safe reading every loader and plugin shares: ``read_checkpoint`` (safetensors, or ``.pt`` through
:mod:`toklip.weights.torch_pickle`: never an unrestricted unpickle), the state dict inside a training checkpoint,
and strict loading with a readable report of what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from toklip.core.errors import CheckpointError
from toklip.weights.torch_pickle import read_torch_checkpoint


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content: an 8-byte little-endian header length that fits the file, then ``{``."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def read_checkpoint(path: str | Path) -> Any:
    """Read a .safetensors file or a PyTorch checkpoint safely (tensors, containers and plain numbers only)."""
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
    return read_torch_checkpoint(path)


def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """The state dict inside a training checkpoint (``state_dict``/``model``/``ema``), with ``module.`` stripped."""
    sd = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not sd:
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"no state dict found in the checkpoint (top-level keys: {keys})")
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
