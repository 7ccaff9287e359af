"""Data: image preprocessing (``preprocess``, ``load_image``: the one place image security limits live), the
readers of every input layout (WebDataset, CSV/TSV, JSONL, class and caption folders; training and
``toklip tokenize`` share them) and :class:`TokenDataset`, the reader of ``toklip tokenize`` output.
Lazy: ``import toklip.data`` does not import torch."""

from __future__ import annotations

from toklip.core.lazy import lazy_getattr

_LAZY = {
    "TokenDataset": "toklip.data.token_dataset:TokenDataset",
    "open_images": "toklip.data.readers:open_images",
    "class_folder_source": "toklip.data.readers:class_folder_source",
    "jsonl_source": "toklip.data.readers:jsonl_source",
    "image_folder_source": "toklip.data.readers:image_folder_source",
    "open_source": "toklip.data.sources:open_source",
    "load_image": "toklip.data.preprocess:load_image",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
