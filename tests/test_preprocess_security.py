"""Regression tests for the shared image path (issue 11, items 7, 8 and 13): the format allowlist, the bounded
resize, and errors that say what a file is. Every hostile file is built here. These guard the library, the
training data decoder and the server alike, since all of them open images through ``load_image``."""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image

import toklip.data.preprocess as pp
from toklip.core.errors import InputError
from toklip.data.preprocess import (
    ALLOWED_FORMATS,
    EXACT_MAX_ASPECT,
    MAX_ASPECT_RATIO,
    CorruptImageError,
    ImageShapeError,
    NotAnImageError,
    UnsupportedImageError,
    describe_bytes,
    load_image,
    preprocess,
    resize_and_crop,
)

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke showpage\n%%EOF\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def strip_png(w: int, h: int) -> bytes:
    """A valid grey w x h PNG; a 1 x 100000 one is a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    data = zlib.compress((b"\x00" + b"\x80" * w) * h, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def no_ghostscript(monkeypatch):
    """Records any attempt to start a process or to use Pillow's EPS plugin."""
    calls: list[object] = []
    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, lambda *a, _n=name, **k: calls.append((_n, a)))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append("EpsImageFile._open"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append("Ghostscript"))
    return calls


# ---------------------------------------------------------------- item 7: the format allowlist
def test_eps_is_refused_without_touching_ghostscript(no_ghostscript, tmp_path):
    disguised = tmp_path / "photo.png"  # the extension does not matter: the bytes are sniffed
    disguised.write_bytes(EPS)
    for src in (EPS, io.BytesIO(EPS), disguised, str(disguised)):
        with pytest.raises(UnsupportedImageError, match="EPS/PostScript.*PNG, JPEG"):
            load_image(src)
    with pytest.raises(UnsupportedImageError):
        preprocess(EPS, 64)
    assert no_ghostscript == []


def test_training_data_uses_the_same_allowlist(no_ghostscript, tmp_path):
    from toklip.data.sources import decode_image

    path = tmp_path / "x.jpg"
    path.write_bytes(EPS)
    for src in (EPS, str(path)):
        with pytest.raises(UnsupportedImageError):
            decode_image(src, 64, "shortest", None)
    assert no_ghostscript == []


@pytest.mark.parametrize(("data", "named"), [
    (b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", "PDF"),
    (b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 8, 8, 8, 3) + bytes(32), "PSD"),
    (b"\x00\x00\x01\x00\x01\x00" + bytes(40), "ICO"),
    (b"\xc5\xd0\xd3\xc6" + bytes(40), "EPS"),
])
def test_other_real_formats_are_refused_by_name(data, named):
    with pytest.raises(UnsupportedImageError, match=named):
        load_image(data)


def test_formats_pillow_could_open_but_are_not_allowed():
    ico = encoded(noise(16, 16), "ICO")
    assert Image.open(io.BytesIO(ico)).format == "ICO"  # Pillow alone would decode it
    with pytest.raises(UnsupportedImageError, match="ICO"):
        load_image(ico)
    tga = encoded(noise(16, 16), "TGA")  # no magic of its own; told apart by its first bytes only
    with pytest.raises(UnsupportedImageError, match="TGA"):
        load_image(tga)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM"])
def test_every_allowed_format_still_loads(fmt):
    assert fmt in ALLOWED_FORMATS
    image = load_image(encoded(noise(40, 30), fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


# ---------------------------------------------------------------- item 8: no resize amplification
@pytest.fixture
def resize_sizes(monkeypatch):
    """Every size Image.resize is asked for, in pixels."""
    sizes: list[tuple[int, int]] = []
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return sizes


@pytest.mark.parametrize("mode", ["shortest", "squash"])
@pytest.mark.parametrize("wh", [(1, 100_000), (100_000, 1), (2, 101), (51, 1)])
def test_extreme_aspect_ratios_are_refused_before_any_resize(resize_sizes, mode, wh):
    data = strip_png(*wh)
    assert len(data) < 1000
    with pytest.raises(ImageShapeError, match=f"{wh[0]}x{wh[1]}.*above the limit of {MAX_ASPECT_RATIO}:1"):
        preprocess(data, 64, resize_mode=mode)
    assert resize_sizes == []


@pytest.mark.parametrize("mode", ["shortest", "squash"])
@pytest.mark.parametrize("wh", [(1, 50), (50, 1), (4, 160), (300, 6), (7, 120)])
def test_long_images_are_never_blown_up(resize_sizes, mode, wh):
    size = 64
    out = resize_and_crop(load_image(strip_png(*wh)), size, mode)
    assert out.size == (size, size)
    assert resize_sizes and all(w * h <= EXACT_MAX_ASPECT * size * size for w, h in resize_sizes), resize_sizes


def _official(image: Image.Image, size: int) -> Image.Image:
    """The official preprocess_val geometry, written out independently: resize short side, centre crop."""
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


@pytest.mark.parametrize("wh", [(640, 480), (480, 640), (97, 61), (64, 64), (30, 20), (1920, 1080), (1000, 80),
                                (40, 630)])
def test_normal_images_are_bit_identical_to_the_official_transform(wh):
    image = noise(*wh, seed=wh[0])
    for size in (64, 256):
        assert np.array_equal(np.asarray(resize_and_crop(image, size)), np.asarray(_official(image, size))), (wh, size)
        assert np.array_equal(np.asarray(resize_and_crop(image, size, "squash")),
                              np.asarray(image.resize((size, size), Image.BICUBIC)))


def test_crop_first_matches_the_official_result_closely():
    image = noise(2000, 60, seed=3)  # 33:1: cropped before resizing
    got = np.asarray(resize_and_crop(image, 64)).astype(int)
    want = np.asarray(_official(image, 64)).astype(int)
    assert np.abs(got - want).mean() < 1.0


def test_aspect_limit_is_inclusive():
    assert resize_and_crop(load_image(strip_png(1, MAX_ASPECT_RATIO)), 32).size == (32, 32)
    with pytest.raises(ImageShapeError):
        resize_and_crop(load_image(strip_png(1, MAX_ASPECT_RATIO + 1)), 32)


def test_bad_transform_sizes_are_refused():
    image = noise(8, 8)
    for size in (0, -3, 10**6, 2.5, True):
        with pytest.raises(InputError, match="image size"):
            resize_and_crop(image, size)  # type: ignore[arg-type]


def test_sixteen_bit_conversion_is_unchanged_and_chunked(monkeypatch):
    arr = (np.random.default_rng(1).integers(0, 65536, (37, 23))).astype(np.uint16)
    want = np.clip(arr.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    monkeypatch.setattr(pp, "_ROWS_PER_CHUNK_PIXELS", 50)  # two rows per chunk
    assert np.array_equal(pp._eight_bit(arr), want)
    png16 = encoded(Image.fromarray(arr), "PNG")
    assert np.array_equal(np.asarray(load_image(png16))[..., 0], want)


# ---------------------------------------------------------------- item 13: say what the bytes are
def test_errors_say_what_was_found():
    rnd = b"\x01" + bytes(np.random.default_rng(5).integers(0, 256, 999, dtype=np.uint8))
    with pytest.raises(NotAnImageError, match="not an image format.*unrecognised binary data.*first bytes are 01"):
        load_image(rnd)
    with pytest.raises(NotAnImageError, match="Python pickle"):
        load_image(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(NotAnImageError, match="ZIP archive"):
        load_image(b"PK\x03\x04" + bytes(100))
    with pytest.raises(NotAnImageError, match="plain text"):
        load_image(b"hello, this is a caption")
    with pytest.raises(CorruptImageError, match="starts like a PNG image"):
        load_image(b"\x89PNG\r\n\x1a\n" + bytes(30))
    assert "pickle" not in describe_bytes(rnd)


def test_decoder_text_is_chained_not_printed():
    data = encoded(noise(128, 128), "PNG")
    broken = data[: len(data) // 2]
    with pytest.raises(CorruptImageError, match="truncated or corrupt") as e:
        load_image(broken, name="images[3]")
    assert str(e.value).startswith("images[3] ") and e.value.__cause__ is not None
    assert str(e.value.__cause__) not in str(e.value)


def test_preprocess_output_is_unchanged_for_the_fixture_shape():
    image = noise(97, 61, seed=9)
    t = preprocess(encoded(image, "PNG"), 64)
    ref = torch.from_numpy(np.asarray(_official(image, 64)).copy()).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    assert torch.equal(t, ref)
