"""Image loading and the official eval transform, with clear errors for bad images.

Transform (official ``preprocess_val``): resize the shorter side to S with PIL bicubic (longer side
``int(S * long / short)``), centre-crop S x S (top = round((h - S) / 2)), RGB, /255, then (x - 0.5) / 0.5.
``resize_mode="squash"`` resizes straight to S x S (what the training scripts' eval used).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from toklip.errors import InputError

MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs well before PIL's own (much larger) limit


def load_image(src: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a path, bytes, file object, PIL image or HWC array as an RGB PIL image (EXIF orientation applied)."""
    if isinstance(src, Image.Image):
        image = src
    elif isinstance(src, np.ndarray) or isinstance(src, Tensor):
        return _from_array(src)
    else:
        if isinstance(src, (bytes, bytearray)):
            if not src:
                raise InputError("the image is empty (0 bytes)")
            fp: Any = io.BytesIO(src)
            name = "image bytes"
        elif isinstance(src, (str, Path)):
            path = Path(src).expanduser()
            if not path.is_file():
                raise InputError(f"image file {str(src)!r} does not exist")
            fp, name = path, str(path)
        elif hasattr(src, "read"):
            fp, name = src, "image stream"
        else:
            raise InputError(f"cannot read an image from a {type(src).__name__}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(fp)
                w, h = image.size
                if w * h > max_pixels:
                    raise InputError(
                        f"{name} is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                        "(decompression-bomb guard); downscale it first"
                    )
                image.load()
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(f"{name} is too large to decode safely: {e}") from e
        except UnidentifiedImageError as e:
            raise InputError(f"{name} is not an image format Pillow can read") from e
        except Exception as e:  # noqa: BLE001 - decoders raise OSError, EOFError, zlib.error, struct.error, ...
            raise InputError(f"{name} could not be decoded (truncated or corrupt?): {type(e).__name__}: {e}") from e
    if getattr(image, "is_animated", False):
        image.seek(0)  # first frame of an animation
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
        pass
    w, h = image.size
    if w < 1 or h < 1:
        raise InputError(f"image has an empty size {w}x{h}")
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(arr: Any) -> Image.Image:
    a = arr.detach().cpu().numpy() if isinstance(arr, Tensor) else np.asarray(arr)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise InputError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4 (channels last), got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 pixels (0..255), got dtype {a.dtype}")
    return _to_rgb(Image.fromarray(a))


def resize_and_crop(image: Image.Image, size: int, resize_mode: str = "shortest") -> Image.Image:
    w, h = image.size
    if resize_mode == "squash":
        return image.resize((size, size), Image.BICUBIC)
    if resize_mode != "shortest":
        raise InputError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> float [3, H, W] in [-1, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    return t.sub_(0.5).div_(0.5)


def preprocess(image: Any, size: int, *, resize_mode: str = "shortest", max_pixels: int = MAX_IMAGE_PIXELS) -> Tensor:
    return to_tensor(resize_and_crop(load_image(image, max_pixels=max_pixels), size, resize_mode))


def to_pil(images: Tensor) -> list[Image.Image]:
    """[B, 3, H, W] (or [3, H, W]) in [-1, 1] -> PIL images (LlamaGen's clamp(127.5 x + 128))."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    pixels = (images.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
