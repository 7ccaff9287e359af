"""Image files for the serving tests, made on the fly: ordinary ones, odd-but-valid ones, and hostile ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(w: int = 96, h: int = 80, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def png(image: Image.Image | None = None) -> bytes:
    return _save(image if image is not None else noise(), "PNG")


def jpeg(image: Image.Image | None = None, **kwargs) -> bytes:
    return _save(image if image is not None else noise(), "JPEG", quality=90, **kwargs)


def halves(w: int = 96, h: int = 64) -> Image.Image:
    """Left half black, right half white: rotation changes it visibly."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, w // 2:] = 255
    arr[: h // 4, : w // 4] = (255, 0, 0)
    return Image.fromarray(arr)


def exif_rotated_jpeg() -> bytes:
    """A JPEG whose EXIF says 'rotate 90 degrees clockwise to display' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(halves(), exif=exif)


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_declaring(w: int, h: int) -> bytes:
    """A PNG bomb: the header claims w x h RGB pixels, the data is a few compressed rows."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(w, 4096)) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def png_huge_valid(side: int = 20000) -> bytes:
    """A complete, valid side x side 1-bit PNG (all black), about 50 kB on disk, side**2 pixels decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def jpeg_declaring(w: int = 65000, h: int = 65000) -> bytes:
    """A JPEG bomb: a small JPEG whose frame header (SOF0) is patched to claim w x h."""
    data = bytearray(jpeg(noise(32, 32)))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def png_bad_crc() -> bytes:
    data = bytearray(png(noise(16, 16)))
    data[29] ^= 0xFF  # inside the IHDR CRC
    return bytes(data)


def png16() -> bytes:
    arr = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    image = Image.fromarray(arr)
    assert image.mode.startswith("I;16")
    return _save(image, "PNG")


def cmyk_jpeg() -> bytes:
    return jpeg(noise(64, 64).convert("CMYK"))


def grayscale_png() -> bytes:
    return png(noise(50, 70, mode="L"))


def rgba_png() -> bytes:
    return png(noise(64, 64, mode="RGBA"))


def palette_png() -> bytes:
    image = noise(40, 40).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [noise(48, 48, seed=s).convert("P") for s in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def one_pixel() -> bytes:
    return png(Image.new("RGB", (1, 1), (10, 200, 30)))


def webp() -> bytes:
    return _save(noise(64, 64), "WEBP", lossless=True)


def tiff() -> bytes:
    return _save(noise(64, 64), "TIFF")


def bmp() -> bytes:
    return _save(noise(33, 17), "BMP")


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<rect width="64" height="64" fill="red"/></svg>')
HTML = b"<!DOCTYPE html><html><body>not an image</body></html>"


# ---------------------------------------------------------------- attacks (issue 11)
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
       b"/Helvetica findfont 12 scalefont setfont 10 10 moveto (gs ran) show showpage\n%%EOF\n")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def psd() -> bytes:
    return b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 64, 64, 8, 3) + bytes(64)


def strip_png(w: int, h: int) -> bytes:
    """A valid grey w x h PNG, a few hundred bytes even for 1 x 100000."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    data = zlib.compress((b"\x00" + b"\x80" * w) * h, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def npy_declaring(shape: tuple[int, ...], dtype: str = "<i8", payload: bytes = b"") -> bytes:
    """An .npy file whose header claims ``shape`` but carries only ``payload``."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def safetensors_raw(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors file written by hand, so any dtype string (BF16, F8_E4M3, ...) can be used."""
    import json

    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)
