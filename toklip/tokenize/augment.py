"""The views each image is tokenized in, as LlamaGen's ``extract_codes_c2i.py`` makes them.

- ``center``: one view, the ADM centre crop (halve with a box filter while the short side is >= 2 S, bicubic
  resize of the short side to S with ``round`` on both sides, crop at ``(size - S) // 2``).
- ``flip``: two views, the centre crop and its horizontal mirror (LlamaGen's default: ``[x, flip(x)]``).
- ``ten-crop``: ten views: the ADM centre crop to ``int(S * crop_range)`` (LlamaGen uses 1.1 and 1.05), then
  torchvision's ``ten_crop(S)`` (4 corners + centre, then the same on the mirrored image).

``resize`` picks the first step: ``adm`` (LlamaGen/ADM, the default), or the model's own transform
(``shortest``: resize the short side then centre-crop, ``squash``: resize straight to S x S) from
:mod:`toklip.data.preprocess`. Decoding and its guards are always :func:`toklip.data.preprocess.load_image`'s.

Views come back as uint8 ``[A, 3, S, S]``: four times smaller than floats across the loader's workers; the
main process maps them to [-1, 1] exactly as ``toklip.data.preprocess.to_tensor`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from toklip.core.errors import ConfigError, InputError

AUGMENTS = {"center": 1, "flip": 2, "ten-crop": 10}
RESIZES = ("adm", "shortest", "squash")
VIEW_NAMES = {
    "center": ["center"],
    "flip": ["center", "center-flip"],
    "ten-crop": ["top-left", "top-right", "bottom-left", "bottom-right", "center",
                 "top-left-flip", "top-right-flip", "bottom-left-flip", "bottom-right-flip", "center-flip"],
}
# A resize whose full output would exceed this many pixels (an extreme aspect ratio, e.g. 1 x 100000) resizes only
# the region that is kept; the kept pixels then match the full resize within 1 grey level.
MAX_RESIZED_PIXELS = 16_000_000


def check_augment(augment: str, crop_range: float, resize: str) -> None:
    if augment not in AUGMENTS:
        raise ConfigError(f"--augment {augment!r} is not one of {', '.join(AUGMENTS)}")
    if resize not in RESIZES:
        raise ConfigError(f"--resize {resize!r} is not one of {', '.join(RESIZES)}")
    if not 1.0 <= crop_range <= 2.0:
        raise ConfigError(f"--crop-range must lie in [1, 2] (LlamaGen uses 1.1 and 1.05), got {crop_range}")


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM / LlamaGen ``center_crop_arr`` on an RGB PIL image -> ``size`` x ``size``."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = round(w * scale), round(h * scale)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    if new_w * new_h <= MAX_RESIZED_PIXELS:
        resized = image.resize((new_w, new_h), resample=Image.BICUBIC)
        return resized.crop((left, top, left + size, top + size))
    sx, sy = w / new_w, h / new_h  # only the kept region: no allocation proportional to the aspect ratio
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return image.resize((size, size), resample=Image.BICUBIC, box=box)


def first_crop(image: Image.Image, size: int, resize: str) -> Image.Image:
    if resize == "adm":
        return adm_center_crop(image, size)
    from toklip.data.preprocess import resize_and_crop

    return resize_and_crop(image, size, resize)


def make_views(src: Any, size: int, augment: str = "center", *, crop_range: float = 1.1, resize: str = "adm",
               max_pixels: int | None = None) -> Tensor:
    """An image (path, bytes, PIL, array) -> uint8 views ``[A, 3, size, size]``; InputError when unreadable."""
    from toklip.data.preprocess import MAX_IMAGE_PIXELS, load_image

    if src is None:
        raise InputError("the sample has no image")
    if isinstance(src, str) and "://" in src:
        raise InputError(f"remote image paths are not fetched ({src}); download them first (img2dataset)")
    image = load_image(src, max_pixels=max_pixels or MAX_IMAGE_PIXELS)
    if augment == "ten-crop":
        from torchvision.transforms.functional import ten_crop

        views = list(ten_crop(first_crop(image, int(size * crop_range), resize), size))
    else:
        views = [first_crop(image, size, resize)]
        if augment == "flip":
            views.append(views[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    arrays = np.stack([np.asarray(v, dtype=np.uint8) for v in views])  # [A, S, S, 3]
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def to_model_range(views: Tensor) -> Tensor:
    """uint8 ``[..., 3, S, S]`` -> float32 in [-1, 1], bit-identical to :func:`toklip.data.preprocess.to_tensor`."""
    return views.float().div_(255.0).sub_(0.5).div_(0.5)
