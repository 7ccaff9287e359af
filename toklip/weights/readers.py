"""Safe state-dict handling every loader and plugin shares: find the state dict inside a training checkpoint,
and load it strictly with a readable report of what differs. ``read_checkpoint`` reads files safely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from toklip.core.errors import CheckpointError


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
