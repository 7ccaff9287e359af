"""Datasets: readers for the input layouts training does not cover (class folders, JSONL, plain image folders)
and :class:`TokenDataset`, the reader of ``toklip tokenize`` output. Lazy: ``import toklip.data`` does not
import torch."""

from __future__ import annotations

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "TokenDataset": "toklip.data.token_dataset:TokenDataset",
    "open_images": "toklip.data.readers:open_images",
    "class_folder_source": "toklip.data.readers:class_folder_source",
    "jsonl_source": "toklip.data.readers:jsonl_source",
    "image_folder_source": "toklip.data.readers:image_folder_source",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
