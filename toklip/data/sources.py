"""Raw-sample sources shared by training and ``toklip tokenize``: WebDataset shards, CSV/TSV files and
captioned image folders.

Every source yields raw samples (image bytes or path, caption) in an order fixed by (seed, epoch); each
process and each loader worker takes its own share (shards when there are enough, else every k-th sample).
Decoding goes through :func:`decode_image`, i.e. the model's preprocessing and the one ``load_image`` whose
security limits every image toklip opens passes.
"""

from __future__ import annotations

import csv
import json
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import ConfigError, InputError, TokLIPError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_EXTS = (".txt", ".json")
IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "filename", "url")
CAPTION_COLUMNS = ("title", "caption", "text", "captions", "sentence")


class DataError(TokLIPError, RuntimeError):
    """A data source that cannot produce a single usable sample (a TokLIPError: the CLI prints one line)."""


@dataclass
class RawSample:
    key: str
    image: Any  # bytes, a path, a PIL image or an HWC uint8 array
    caption: Any  # str, or bytes of a .txt / .json caption file


@dataclass(frozen=True)
class Part:
    """Which share of the data one worker of one process reads."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.workers + self.worker

    @property
    def total(self) -> int:
        return self.world * self.workers


# ---------------------------------------------------------------------------------------------- sources
class Source:
    """A sized or unsized collection of raw samples that can be read in a seeded order, share by share."""

    num_samples: int | None = None

    def iter_epoch(self, epoch: int, part: Part, *, seed: int, shuffle: bool, start: int) -> Iterator[RawSample]:
        """Raw samples of this part for this epoch, skipping the first ``start`` without decoding them."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class ListSource(Source):
    """A known list of samples (CSV rows, folder files, in-memory arrays): a seeded permutation per epoch."""

    def __init__(self, samples: Sequence[RawSample], what: str) -> None:
        if not samples:
            raise DataError(f"{what} has no samples")
        self.samples = list(samples)
        self.num_samples = len(self.samples)
        self.what = what

    def order(self, epoch: int, part: Part, *, seed: int, shuffle: bool) -> list[int]:
        n = len(self.samples)
        if shuffle:
            g = torch.Generator().manual_seed(_mix(seed, epoch))
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        return perm[part.index :: part.total]

    def iter_epoch(self, epoch: int, part: Part, *, seed: int, shuffle: bool, start: int) -> Iterator[RawSample]:
        for i in self.order(epoch, part, seed=seed, shuffle=shuffle)[start:]:
            yield self.samples[i]

    def describe(self) -> str:
        return f"{self.what} ({self.num_samples} samples)"


class IndexSource(ListSource):
    """The items ``0 .. n-1`` of a map-style dataset (``TokenDataset``, conversation files) as samples whose
    ``image`` is ``(epoch, index)`` (the epoch lets a decoder draw augmentations that differ per epoch and
    resume exactly): the same seeded order, shares and exact resume as every other source."""

    def __init__(self, n: int, what: str) -> None:
        if n <= 0:
            raise DataError(f"{what} has no samples")
        self.samples = range(n)  # type: ignore[assignment]
        self.num_samples, self.what = n, what

    def iter_epoch(self, epoch: int, part: Part, *, seed: int, shuffle: bool, start: int) -> Iterator[RawSample]:
        for i in self.order(epoch, part, seed=seed, shuffle=shuffle)[start:]:
            yield RawSample(key=str(i), image=(epoch, i), caption=None)


class WebDatasetSource(Source):
    """img2dataset-layout tar shards (``key.jpg`` + ``key.txt``/``key.json``), local or any WebDataset URL."""

    def __init__(self, urls: Sequence[str], num_samples: int | None = None, shuffle_buffer: int = 1000) -> None:
        if not urls:
            raise DataError("no WebDataset shards given")
        self.urls = list(urls)
        self.num_samples = num_samples if num_samples is not None else _count_from_stats(self.urls)
        self.shuffle_buffer = shuffle_buffer
        self.read_errors = 0

    def _handler(self, exn: Exception) -> bool:
        self.read_errors += 1
        warnings.warn(f"skipping unreadable shard data: {type(exn).__name__}: {exn}", stacklevel=2)
        return True

    def iter_epoch(self, epoch: int, part: Part, *, seed: int, shuffle: bool, start: int) -> Iterator[RawSample]:
        from webdataset.tariterators import tarfile_samples

        urls = list(self.urls)
        if shuffle:
            random.Random(_mix(seed, epoch)).shuffle(urls)
        by_shard = len(urls) >= part.total
        mine = urls[part.index :: part.total] if by_shard else urls
        stream: Iterator[dict[str, Any]] = iter(tarfile_samples(({"url": u} for u in mine), handler=self._handler))
        if not by_shard:
            stream = (s for i, s in enumerate(stream) if i % part.total == part.index)
        raw = (_wds_sample(s) for s in stream)
        if shuffle and self.shuffle_buffer > 1:
            raw = _buffer_shuffle(raw, self.shuffle_buffer, random.Random(_mix(seed, epoch, part.index)))
        for i, sample in enumerate(raw):
            if i >= start:
                yield sample

    def describe(self) -> str:
        n = f"{self.num_samples} samples" if self.num_samples else "size unknown"
        return f"WebDataset, {len(self.urls)} shard(s), {n}"


class JsonCaption(bytes):
    """The bytes of a ``.json`` caption record ({"caption": ...}), told apart from ``.txt`` bytes."""


def _wds_sample(s: dict[str, Any]) -> RawSample:
    key = str(s.get("__key__", "?"))
    image = next((s[e[1:]] for e in IMAGE_EXTS if e[1:] in s), None)
    caption = s.get("txt")
    if caption is None and s.get("json") is not None:
        caption = JsonCaption(s["json"])
    return RawSample(key=f"{s.get('__url__', '')}:{key}", image=image, caption=caption)


def _buffer_shuffle(items: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    buf: list[RawSample] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


def _count_from_stats(urls: Sequence[str]) -> int | None:
    """img2dataset writes ``<shard>_stats.json`` with ``successes``; sum them when every local shard has one."""
    total = 0
    for u in urls:
        p = Path(u)
        stats = p.with_name(p.stem + "_stats.json")
        if not stats.is_file():
            return None
        try:
            total += int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, TypeError, OSError):
            return None
    return total


def _mix(*values: int) -> int:
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


# ---------------------------------------------------------------------------------------------- opening sources
def expand_shards(path: Any) -> list[str]:
    """A brace pattern, a list, a directory of .tar files, or '::'-separated patterns -> shard URLs."""
    from webdataset.shardlists import expand_urls

    if isinstance(path, (list, tuple)):
        return [u for p in path for u in expand_shards(p)]
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        shards = sorted(str(p) for p in local.glob("*.tar"))
        if not shards:
            raise DataError(f"{local} contains no .tar shards")
        return shards
    urls = list(expand_urls(text))
    local_urls = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    if urls and len(local_urls) == len(urls) and not any(Path(u).expanduser().is_file() for u in local_urls):
        raise DataError(f"no shard of {text!r} exists ({len(urls)} file name(s) expanded, e.g. {urls[0]!r})")
    return urls


def csv_source(path: str | Path, *, image_key: str | None = None, caption_key: str | None = None,
               separator: str | None = None) -> ListSource:
    """A CSV/TSV with a header row; relative image paths are taken relative to the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist")
    sep = separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        header = reader.fieldnames or []
        img_col = image_key or next((c for c in IMAGE_COLUMNS if c in header), None)
        cap_col = caption_key or next((c for c in CAPTION_COLUMNS if c in header), None)
        for col, what, opts in ((img_col, "image", IMAGE_COLUMNS), (cap_col, "caption", CAPTION_COLUMNS)):
            if col is None or col not in header:
                raise ConfigError(
                    f"{path}: no {what} column (header: {header}); name it one of {list(opts)} or set "
                    f"data.{what}_key (separator {sep!r}; set data.separator if that is wrong)"
                )
        samples = []
        for i, row in enumerate(reader):
            img = (row.get(img_col) or "").strip()
            ref = img if "://" in img else str((path.parent / img) if not Path(img).is_absolute() else Path(img))
            samples.append(RawSample(key=f"{path.name}:{i + 2}", image=ref, caption=row.get(cap_col)))
    return ListSource(samples, f"CSV {path}")


def folder_source(root: str | Path) -> ListSource:
    """Images under ``root`` (recursively), each with a caption file of the same stem (``.txt`` or ``.json``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    samples, missing = [], 0
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            continue
        cap = next((p.with_suffix(e) for e in CAPTION_EXTS if p.with_suffix(e).is_file()), None)
        if cap is None:
            missing += 1
            continue
        samples.append(RawSample(key=str(p.relative_to(root)), image=str(p), caption=cap))
    if not samples:
        raise DataError(
            f"{root} has no image with a caption file beside it ({missing} image(s) without one); put "
            "'name.txt' (the caption) or 'name.json' ({\"caption\": ...}) next to each 'name.jpg'"
        )
    if missing:
        warnings.warn(f"{root}: {missing} image(s) have no caption file and are left out", stacklevel=2)
    return ListSource(samples, f"folder {root}")


def open_source(cfg: Any) -> Source:
    """``cfg`` is a ``DataConfig``: pick the source from ``type`` (or guess it from ``path``)."""
    path, kind = cfg.path, cfg.type
    if path is None:
        raise ConfigError("data.path is not set: give WebDataset shards, a CSV/TSV file or an image folder")
    if kind == "auto":
        text = str(path[0] if isinstance(path, (list, tuple)) else path)
        local = Path(text).expanduser()
        if isinstance(path, (list, tuple)) or ".tar" in text or "://" in text or text.startswith("pipe:"):
            kind = "webdataset"
        elif local.suffix.lower() in (".csv", ".tsv"):
            kind = "csv"
        elif local.is_dir():
            kind = "webdataset" if any(local.glob("*.tar")) else "folder"
        elif not local.exists():
            raise DataError(f"data.path {text!r} does not exist")
        else:
            raise ConfigError(f"cannot tell what data.path={text!r} is; set data.type to webdataset, csv or folder")
    if kind == "webdataset":
        return WebDatasetSource(expand_shards(path), cfg.num_samples, cfg.shuffle_buffer)
    if kind == "csv":
        return csv_source(path, image_key=cfg.image_key, caption_key=cfg.caption_key, separator=cfg.separator)
    return folder_source(path)


# ---------------------------------------------------------------------------------------------- decoding
def read_caption(value: Any) -> str:
    """A caption from a string, ``.txt`` bytes, ``.json`` bytes/dict (``caption``/``text``) or a caption file.

    ``.txt`` captions are text whatever they look like ("{curly} braces" included); only ``.json`` is parsed."""
    if isinstance(value, Path):
        value = value.read_bytes() if value.suffix.lower() == ".txt" else JsonCaption(value.read_bytes())
    if isinstance(value, JsonCaption):
        value = json.loads(value.decode("utf-8"))
    elif isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8")
    if isinstance(value, dict):
        value = next((value[k] for k in ("caption", "text", "title") if isinstance(value.get(k), str)), None)
    if not isinstance(value, str) or not value.strip():
        raise InputError("the caption is missing or empty")
    return value.strip()


def decode_image(image: Any, size: int, resize_mode: str, max_pixels: int | None) -> Tensor:
    """Raw image -> [3, S, S] in [-1, 1] with the model's own preprocessing; raises InputError when unreadable."""
    from toklip.data.preprocess import MAX_IMAGE_PIXELS, preprocess

    if image is None:
        raise InputError("the sample has no image")
    if isinstance(image, str) and "://" in image:
        raise InputError(f"remote image paths are not fetched during training ({image}); download them first")
    return preprocess(image, size, resize_mode=resize_mode, max_pixels=max_pixels or MAX_IMAGE_PIXELS)
