"""Tiny inputs in every layout ``toklip tokenize`` reads, and a helper that tokenizes them in-process.

Images are the training tests' small random JPEGs (40x48; tests/train/conftest.py makes them), tokenized with
the random-weight ``llamagen-test`` VQ (8x down, 1024 codes) at 32 px, so a run takes well under a second.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch

from tests.train.conftest import GARBAGE, jpeg_bytes, make_csv, make_folder, make_shards, truncated_jpeg

SIZE = 32
THREADS = 1

__all__ = ["GARBAGE", "jpeg_bytes", "make_csv", "make_folder", "make_shards", "truncated_jpeg"]


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width x height pixels (10^10 by default) and holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_class_folders(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog"),
                       bad: dict[str, bytes] | None = None) -> Path:
    """``root/<class>/<i>.jpg``; ``bad`` adds extra files (name -> bytes) to the last class."""
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (d / f"{i}.jpg").write_bytes(jpeg_bytes(100 * c + i))
    for name, data in (bad or {}).items():
        (root / classes[-1] / name).write_bytes(data)
    return root


def make_jsonl(root: Path, n: int) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (images / f"{i}.jpg").write_bytes(jpeg_bytes(i))
        lines.append(json.dumps({"image": f"images/{i}.jpg", "caption": f"caption {i}"}))
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def vq_spec(seed: int = 0, **args):
    from toklip.tokenize.encode import TokenizerSpec

    return TokenizerSpec("vq", "llamagen-test", None, dict(args), seed)


def run(images, out, *, spec=None, size: int = SIZE, **options):
    """Tokenize in this process with llamagen-test (fp32, CPU, no progress bar)."""
    from toklip.tokenize.runner import TokenizeOptions, tokenize_dataset

    kw = {k: options.pop(k) for k in ("precision", "input_type", "echo") if k in options}
    opts = TokenizeOptions(**{"workers": 0, "batch_size": 4, **options})
    return tokenize_dataset(images, out, spec or vq_spec(), options=opts, image_size=size, device="cpu",
                            progress=False, **{"precision": "fp32", "echo": lambda m: None, **kw})


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every shard file's bytes, by name (the records too: they must match as well)."""
    return {p.name: p.read_bytes() for p in sorted((Path(out) / "shards").iterdir())}
