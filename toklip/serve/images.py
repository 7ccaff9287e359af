"""Untrusted image bytes -> model input. The size is checked from the header before any pixel is decoded,
so decompression bombs cost nothing; every decoding failure becomes a 4xx naming the image."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from toklip.errors import InputError
from toklip.preprocess import load_image
from toklip.serve.errors import bad_request, too_large

log = logging.getLogger("toklip.serve")


MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
         (b"MM\x00*", "TIFF"))


def _corrupt_format(data: bytes) -> str | None:
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _not_an_image(data: bytes, index: int) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        return f"images[{index}] is an SVG (vector) image; rasterise it to PNG first"
    if head.startswith((b"<!doctype", b"<html")):
        return f"images[{index}] is an HTML document, not an image"
    if head.startswith((b"{", b"[")):
        return f"images[{index}] looks like JSON; send JSON bodies with Content-Type: application/json"
    return f"images[{index}] is not an image format Pillow can read (send PNG, JPEG, WebP, GIF, BMP or TIFF)"


def probe_size(data: bytes, index: int, max_pixels: int) -> tuple[int, int]:
    """Width and height from the header only; refuses bombs and non-images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
    except Image.DecompressionBombError as e:
        raise too_large(
            f"images[{index}] is too large to decode safely ({e}); this server takes at most {max_pixels:,} pixels "
            "per image; downscale it first",
            "image_too_large",
        ) from e
    except UnidentifiedImageError as e:
        fmt = _corrupt_format(data)
        if fmt is not None:
            message = f"images[{index}] starts like a {fmt} file but its header is corrupt"
            raise bad_request(message, "invalid_image") from e
        raise bad_request(_not_an_image(data, index), "not_an_image") from e
    except Exception as e:  # noqa: BLE001 - any failure on hostile bytes is the client's
        raise bad_request(f"images[{index}] has an unreadable header ({type(e).__name__}: {e})", "invalid_image") from e
    if w * h > max_pixels:
        raise too_large(
            f"images[{index}] is {w}x{h} = {w * h:,} pixels, above this server's limit of {max_pixels:,} "
            "(decompression-bomb guard); downscale it first",
            "image_too_large",
        )
    if w < 1 or h < 1:
        raise bad_request(f"images[{index}] has an empty size {w}x{h}", "invalid_image")
    return w, h


def decode_image(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """Bytes -> RGB PIL image (EXIF orientation applied, first frame of an animation, alpha over white)."""
    probe_size(data, index, max_pixels)
    try:
        return load_image(data, max_pixels=max_pixels)
    except InputError as e:
        raise bad_request(f"images[{index}]: {e}", "invalid_image") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises assorted errors on corrupt files
        log.debug("image %d failed to decode", index, exc_info=True)
        raise bad_request(
            f"images[{index}] could not be decoded (truncated or corrupt?): {type(e).__name__}: {e}", "invalid_image"
        ) from e


def images_to_batch(
    blobs: Sequence[bytes], max_pixels: int, preprocess: Callable[[Image.Image], Tensor]
) -> Tensor:
    """Decode and preprocess every image of one request: [n, 3, S, S]."""
    return torch.stack([preprocess(decode_image(b, i, max_pixels)) for i, b in enumerate(blobs)])
