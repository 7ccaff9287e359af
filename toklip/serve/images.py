"""Untrusted image bytes -> model input, through ``toklip.data.preprocess.load_image`` (the one place that holds the
format allowlist and the pixel limit). Each refusal becomes a 4xx naming the image: 415 for image formats the
server does not decode (EPS, PDF, PSD, ...), 413 for decompression bombs, 400 for corrupt files and non-images,
422 for shapes the transform refuses. Decoder exception text is logged, never sent."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from toklip.core.errors import InputError
from toklip.data.preprocess import (
    CorruptImageError,
    ImageShapeError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedImageError,
    load_image,
    sniff,
)
from toklip.serve.errors import APIError, bad_request, invalid, too_large

log = logging.getLogger("toklip.serve")


def decode_image(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """Bytes -> RGB PIL image (EXIF orientation applied, first frame of an animation, alpha over white)."""
    name = f"images[{index}]"
    try:
        return load_image(data, max_pixels=max_pixels, name=name)
    except Exception as e:  # noqa: BLE001 - Pillow can raise anything on hostile bytes; image_error says what
        raise image_error(e, data, name) from e


def image_error(e: Exception, data: bytes, name: str) -> APIError:
    """The 4xx for an image ``load_image`` refused (``name``: how the message calls it, e.g. "images[0]")."""
    if isinstance(e, UnsupportedImageError):
        return APIError(415, "unsupported_image_format", str(e))
    if isinstance(e, ImageTooLargeError):
        return too_large(str(e), "image_too_large")
    if isinstance(e, NotAnImageError):
        kind = sniff(data[:4096])
        hint = "; send JSON bodies with Content-Type: application/json" if kind and kind.name == "JSON" else ""
        return bad_request(f"{e}{hint}", "not_an_image" if data else "empty_image")
    if isinstance(e, (CorruptImageError, ImageShapeError)):
        log.debug("%s failed to decode", name, exc_info=e)
        return bad_request(str(e), "invalid_image")
    if isinstance(e, InputError):
        return bad_request(f"{name}: {e}", "invalid_image")
    log.warning("%s: unexpected %s while decoding", name, type(e).__name__, exc_info=e)
    return bad_request(f"{name} could not be decoded (corrupt or unsupported file)", "invalid_image")


def preprocess_image(image: Image.Image, index: int, preprocess: Callable[[Image.Image], Tensor]) -> Tensor:
    """The model's transform; a shape it refuses (e.g. a 1 x 100000 strip) is a 422 naming the image."""
    try:
        return preprocess(image)
    except ImageShapeError as e:
        raise invalid(f"images[{index}]: {e}", "unsupported_image_shape") from e
    except InputError as e:
        raise invalid(f"images[{index}]: {e}", "invalid_image") from e


def images_to_batch(
    blobs: Sequence[bytes], max_pixels: int, preprocess: Callable[[Image.Image], Tensor]
) -> Tensor:
    """Decode and preprocess every image of one request: [n, 3, S, S]."""
    return torch.stack([preprocess_image(decode_image(b, i, max_pixels), i, preprocess) for i, b in enumerate(blobs)])
