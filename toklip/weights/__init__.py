"""Weights: the one loader (``toklip.load``) and the safe readers plugins use.

Plugins read files with ``read_checkpoint`` (safetensors, or ``torch.load(weights_only=True)`` with the smallest
allowlist), take the state dict out of a training checkpoint with ``unwrap_state_dict`` and load it with
``load_state_dict_strict`` (every key and shape must match). Importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "read_checkpoint": "toklip.weights.readers:read_checkpoint",
    "unwrap_state_dict": "toklip.weights.readers:unwrap_state_dict",
    "load_state_dict_strict": "toklip.weights.readers:load_state_dict_strict",
    "local_weights": "toklip.weights.hub:local_weights",
    "resolve_source": "toklip.weights.sources:resolve_source",
}
__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from toklip.weights.readers import load_state_dict_strict, read_checkpoint, unwrap_state_dict
