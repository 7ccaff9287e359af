"""Image loading and the official eval transform, with clear errors for bad or hostile images.

Transform (official ``preprocess_val``): resize the shorter side to S with PIL bicubic (longer side
``int(S * long / short)``), centre-crop S x S (top = round((h - S) / 2)), RGB, /255, then (x - 0.5) / 0.5.
``resize_mode="squash"`` resizes straight to S x S (what the training scripts' eval used).

Every image file toklip opens (library, training data, the server, ``toklip tokenize``) goes through
``load_image``, which is the one place the security limits live:

- only ``ALLOWED_FORMATS`` are ever handed to a decoder (``Image.open(formats=...)``): EPS/PostScript/PDF
  never reach Ghostscript, and exotic decoders are never reached at all;
- the pixel count is checked from the header, before any pixel is decoded (decompression bombs cost nothing);
- ``resize_and_crop`` refuses aspect ratios above ``MAX_ASPECT_RATIO`` and never makes an image larger than
  ``EXACT_MAX_ASPECT`` x S x S pixels: beyond that aspect it crops before resizing, so a 1 x 100000 strip
  cannot be blown up to 6.4 M x 64 pixels.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from toklip.core.errors import InputError

MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs well before PIL's own (much larger) limit
# Pillow format ids handed to Image.open; nothing else is ever decoded.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP, TIFF or PPM"
_OPENED_AS = frozenset(ALLOWED_FORMATS) | {"MPO"}  # Pillow's JPEG plugin reports multi-picture JPEGs as MPO
# Beyond 50:1 a centre crop keeps under 2 % of the image and a squash distorts it more than 50x: neither is a
# meaningful view, and such files are strips, separators or attacks.
MAX_ASPECT_RATIO = 50
# Up to this aspect ratio the official resize-then-crop runs bit for bit (its intermediate image is at most
# 16 x S x S pixels); above it the crop comes first and the resize makes S x S directly.
EXACT_MAX_ASPECT = 16
RESIZE_MODES = ("shortest", "squash")
_ROWS_PER_CHUNK_PIXELS = 1 << 20  # 16-bit -> 8-bit conversion works on ~1 M pixels at a time


# ------------------------------------------------------------------------------------------------ errors
class ImageError(InputError):
    """An image that toklip refuses or cannot read; the subclass says why (the server maps it to a status)."""


class UnsupportedImageError(ImageError):
    """A real image format, but not one of ``ALLOWED_FORMATS`` (EPS, PDF, PSD, ICO, JPEG 2000, HEIF, ...)."""


class NotAnImageError(ImageError):
    """Bytes that are no image at all (text, JSON, HTML, SVG, archives, arrays, random data)."""


class CorruptImageError(ImageError):
    """An allowed format whose header or pixel data is truncated or corrupt."""


class ImageTooLargeError(ImageError):
    """More pixels than the decompression-bomb limit."""


class ImageShapeError(ImageError):
    """An empty image or an aspect ratio above ``MAX_ASPECT_RATIO``."""


# ------------------------------------------------------------------------------------------------ sniffing
@dataclass(frozen=True)
class FileKind:
    """What the first bytes of a file say it is."""

    name: str  # "an EPS (PostScript) document"
    image: bool  # a raster or vector image format
    allowed: bool = False  # one of ALLOWED_FORMATS
    hint: str = ""  # what to do instead


_MAGIC: tuple[tuple[bytes, FileKind], ...] = (
    (b"\x89PNG", FileKind("a PNG image", True, True)),
    (b"\xff\xd8", FileKind("a JPEG image", True, True)),
    (b"GIF8", FileKind("a GIF image", True, True)),
    (b"BM", FileKind("a BMP image", True, True)),
    (b"II*\x00", FileKind("a TIFF image", True, True)),
    (b"MM\x00*", FileKind("a TIFF image", True, True)),
    (b"%!PS", FileKind("an EPS/PostScript document", True, hint="rasterise it to PNG first")),
    (b"\xc5\xd0\xd3\xc6", FileKind("an EPS document (with a binary preview)", True, hint="rasterise it to PNG first")),
    (b"%PDF-", FileKind("a PDF document", True, hint="render its pages to PNG first")),
    (b"8BPS", FileKind("a Photoshop (PSD) file", True, hint="export it as PNG first")),
    (b"\x00\x00\x01\x00", FileKind("an ICO icon", True)),
    (b"\x00\x00\x02\x00", FileKind("a TGA image or a CUR cursor", True)),
    (b"\x00\x00\x00\x0cjP  ", FileKind("a JPEG 2000 image", True)),
    (b"\xff\x4f\xff\x51", FileKind("a JPEG 2000 codestream", True)),
    (b"qoif", FileKind("a QOI image", True)),
    (b"DDS ", FileKind("a DirectDraw Surface (DDS) texture", True)),
    (b"icns", FileKind("an ICNS icon", True)),
    (b"SIMPLE  =", FileKind("a FITS file", True)),
    (b"gimp xcf", FileKind("a GIMP (XCF) file", True)),
    (b"v/1\x01", FileKind("an OpenEXR image", True)),
    (b"#?RADIANCE", FileKind("a Radiance HDR image", True)),
    (b"/* XPM */", FileKind("an XPM image", True)),
    (b"\x93NUMPY", FileKind("a NumPy .npy array", False)),
    (b"PK\x03\x04", FileKind("a ZIP archive (PyTorch .pt checkpoints are ZIP archives)", False)),
    (b"\x1f\x8b", FileKind("gzip-compressed data", False, hint="decompress it first")),
    (b"BZh", FileKind("bzip2-compressed data", False, hint="decompress it first")),
    (b"\xfd7zXZ\x00", FileKind("xz-compressed data", False, hint="decompress it first")),
    (b"(\xb5/\xfd", FileKind("zstd-compressed data", False, hint="decompress it first")),
    (b"7z\xbc\xaf\x27\x1c", FileKind("a 7-Zip archive", False)),
    (b"\x7fELF", FileKind("an ELF executable", False)),
    (b"MZ", FileKind("a Windows executable", False)),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def sniff(head: bytes) -> FileKind | None:
    """Recognise a file from its first bytes (a few KiB); None when nothing matches."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return FileKind("a WebP image", True, True)
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return FileKind("a PPM/PGM/PBM image", True, True)
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return FileKind("a HEIF/AVIF image", True)
    if head[4:8] == b"ftyp":
        return FileKind("an MP4/QuickTime (ISO media) file", False)
    if len(head) >= 3 and head[0] == 0x0A and head[1] in (0, 2, 3, 4, 5) and head[2] == 1:
        return FileKind("a PCX image", True)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FileKind("a Python pickle (never loaded: unpickling can run code)", False)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 28):
        return FileKind("a safetensors file", False)
    if head[257:262] == b"ustar":
        return FileKind("a tar archive", False)
    text = head[:4096].lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in text:
        return FileKind("an SVG (vector) image", True, hint="rasterise it to PNG first")
    if text.startswith((b"<!doctype", b"<html")):
        return FileKind("an HTML document", False)
    if text.startswith(b"<?xml"):
        return FileKind("an XML document", False)
    if text.startswith((b"{", b"[")):
        return FileKind("JSON", False)
    return None


def describe_bytes(head: bytes) -> str:
    """'an EPS/PostScript document', or 'unrecognised data (the first bytes are 00 01 ...)': for error messages."""
    kind = sniff(head)
    if kind is not None:
        return kind.name
    if not head:
        return "empty"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    texty = all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64])
    what = "plain text" if texty else "unrecognised binary data"
    return f"{what} (the first bytes are {shown})"


def _unidentified(head: bytes, name: str) -> ImageError:
    kind = sniff(head)
    hint = f"; {kind.hint}" if kind is not None and kind.hint else ""
    if kind is not None and kind.allowed:
        return CorruptImageError(f"{name} could not be decoded: it starts like {kind.name} but its header is "
                                 "corrupt (truncated or damaged file)")
    if kind is not None and kind.image:
        return UnsupportedImageError(f"{name} is {kind.name}, which toklip does not read: it reads only "
                                     f"{FORMAT_NAMES} images{hint or '; convert it to PNG first'}")
    found = kind.name if kind is not None else describe_bytes(head)
    return NotAnImageError(f"{name} is not an image format toklip reads ({FORMAT_NAMES}): it is {found}{hint}")


# ------------------------------------------------------------------------------------------------ loading
def load_image(src: Any, *, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> Image.Image:
    """Open a path, bytes, file object, PIL image or HWC array as an RGB PIL image (EXIF orientation applied).

    Files are opened only as ``ALLOWED_FORMATS`` and refused above ``max_pixels`` before decoding. ``name``
    is how error messages call the image (default: its path, or "image bytes").
    """
    if isinstance(src, Image.Image):
        image = src
    elif isinstance(src, np.ndarray) or isinstance(src, Tensor):
        return _from_array(src)
    else:
        image = _decode_file(src, max_pixels, name)
    if getattr(image, "is_animated", False):
        image.seek(0)  # first frame of an animation
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
        pass
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageShapeError(f"{name or 'the image'} has an empty size {w}x{h}")
    return _to_rgb(image)


def _decode_file(src: Any, max_pixels: int, name: str | None) -> Image.Image:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise NotAnImageError(f"{name or 'the image'} is empty (0 bytes)")
        fp: Any = io.BytesIO(data)
        name = name or "image bytes"
    elif isinstance(src, (str, Path)):
        path = Path(src).expanduser()
        if not path.is_file():
            raise InputError(f"image file {str(src)!r} does not exist")
        fp, name = path, name or str(path)
    elif hasattr(src, "read"):
        fp, name = src, name or "image stream"
    else:
        raise InputError(f"cannot read an image from a {type(src).__name__}")
    image = open_image(fp, name, max_pixels)
    try:
        image.load()
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, EOFError, zlib.error, struct.error, ...
        raise CorruptImageError(f"{name} is a {image.format} image whose pixel data could not be decoded "
                                f"(truncated or corrupt file; {type(e).__name__})") from e
    return image


def open_image(fp: Any, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open (header only) with the allowed formats only, and refuse more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than Pillow allows"
        raise ImageTooLargeError(f"{name} declares {size}, above the limit of {max_pixels:,} "
                                 "(decompression-bomb guard); downscale it first") from e
    except UnidentifiedImageError as e:
        raise _unidentified(_head(fp), name) from e
    except Exception as e:  # noqa: BLE001 - a plugin's header parser can raise anything on hostile bytes
        raise CorruptImageError(f"{name} could not be decoded: its header is unreadable (truncated or corrupt "
                                f"file; {type(e).__name__})") from e
    if image.format not in _OPENED_AS:  # defence in depth: Image.open(formats=...) already ensures this
        image.close()
        raise UnsupportedImageError(f"{name} is in the {image.format} format; toklip reads only {FORMAT_NAMES} images")
    w, h = image.size
    if w * h > max_pixels:
        image.close()
        raise ImageTooLargeError(f"{name} is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                                 "(decompression-bomb guard); downscale it first")
    return image


def _head(fp: Any, n: int = 4096) -> bytes:
    """The first bytes of whatever Image.open just failed on (for the error message)."""
    try:
        if isinstance(fp, io.BytesIO):
            return fp.getbuffer()[:n].tobytes()
        if isinstance(fp, Path):
            with open(fp, "rb") as f:
                return f.read(n)
        if fp.seekable():
            fp.seek(0)
            return bytes(fp.read(n))
    except (OSError, ValueError, AttributeError):
        pass
    return b""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = Image.fromarray(_eight_bit(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _eight_bit(arr: np.ndarray) -> np.ndarray:
    """16/32-bit grey -> uint8, scaled by 65535 when any value exceeds 255; in row chunks (bounded float64)."""
    hi = 65535.0 if arr.max() > 255 else 255.0
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, _ROWS_PER_CHUNK_PIXELS // max(1, arr.shape[1]))
    for r in range(0, arr.shape[0], rows):
        part = arr[r:r + rows].astype(np.float64)
        out[r:r + rows] = np.clip(part / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


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


# ------------------------------------------------------------------------------------------------ transform
def check_aspect(width: int, height: int, max_aspect: float = MAX_ASPECT_RATIO) -> None:
    """Refuse empty images and aspect ratios above ``max_aspect`` (see ``MAX_ASPECT_RATIO``)."""
    if width < 1 or height < 1:
        raise ImageShapeError(f"the image has an empty size {width}x{height}")
    short, long = min(width, height), max(width, height)
    if long > max_aspect * short:
        raise ImageShapeError(
            f"the image is {width}x{height}, an aspect ratio of {long / short:,.0f}:1, above the limit of "
            f"{max_aspect:g}:1 (a centre crop would keep under {100 / max_aspect:g}% of it); crop it to the part "
            "that matters first"
        )


def resize_and_crop(image: Image.Image, size: int, resize_mode: str = "shortest") -> Image.Image:
    """The eval transform's geometry: S x S RGB. Never builds more than ``EXACT_MAX_ASPECT`` x S x S pixels."""
    if resize_mode not in RESIZE_MODES:
        raise InputError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size * size > MAX_IMAGE_PIXELS:
        raise InputError(f"the image size must be an integer from 1 to {int(MAX_IMAGE_PIXELS ** 0.5)}, got {size!r}")
    w, h = image.size
    check_aspect(w, h)
    if resize_mode == "squash":
        # Pillow resizes width first: at most S x h pixels in between, and h <= 50 w bounds that.
        return image.resize((size, size), Image.BICUBIC)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if new_long <= EXACT_MAX_ASPECT * size:  # the official transform, bit for bit
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        return image.crop((left, top, left + size, top + size))
    # Crop first: resample only the source region the centre crop keeps, straight to S x S.
    sx, sy = w / new_w, h / new_h
    return image.resize((size, size), Image.BICUBIC, box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


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


def image_grid(images: Tensor, columns: int) -> Image.Image:
    """[B, 3, H, W] in [-1, 1] -> one sheet, row-major with ``columns`` tiles per row (white where none)."""
    tiles = to_pil(images)
    h, w = images.shape[-2:]
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * w, (k // columns) * h))
    return sheet
