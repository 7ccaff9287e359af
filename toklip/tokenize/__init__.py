"""``toklip tokenize``: image datasets -> sharded, memory-mappable token arrays with a manifest (resumable,
torchrun-ready), ``verify`` and ``stats``. Read the output with :class:`toklip.data.TokenDataset`."""

from __future__ import annotations

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "tokenize_dataset": "toklip.tokenize.runner:tokenize_dataset",
    "TokenizeOptions": "toklip.tokenize.runner:TokenizeOptions",
    "TokenizerSpec": "toklip.tokenize.encode:TokenizerSpec",
    "build_tokenizer": "toklip.tokenize.encode:build_tokenizer",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
