"""Decoding in DataLoader workers: batches of uint8 views for the pending shards of one rank.

Worker ``w`` of ``W`` takes every W-th sample of each list shard (all workers share every shard, so a single big
shard still uses them all) and whole tars of WebDataset inputs (a tar is read once). Each batch carries its shard
and the samples' positions in it; after its share of a shard, a worker sends an ``end`` message with its skipped
samples, and the main process writes the shard once every expected ``end`` has arrived. Unreadable images and
decompression bombs raise :class:`~toklip.core.errors.InputError` in :func:`toklip.data.preprocess.load_image` and are
skipped and listed, as in training.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from toklip.core.errors import InputError
from toklip.tokenize.augment import make_views
from toklip.tokenize.plan import Job
from toklip.data.sources import Part, RawSample, WebDatasetSource, read_caption

SKIPPABLE = (InputError, OSError, ValueError, UnicodeDecodeError)


@dataclass(frozen=True)
class ViewSettings:
    size: int
    augment: str = "center"
    crop_range: float = 1.1
    resize: str = "adm"
    max_pixels: int | None = None


def sample_meta(s: RawSample) -> dict[str, Any]:
    """The label (class folders) or caption (captioned inputs) stored beside a sample's tokens."""
    meta: dict[str, Any] = {"key": s.key}
    label = getattr(s, "label", None)
    if label is not None and label >= 0:
        meta["label"] = int(label)
    if s.caption is not None:
        meta["caption"] = read_caption(s.caption)
    return meta


def _tar_samples(url: str) -> Iterator[RawSample]:
    source = WebDatasetSource([url], shuffle_buffer=0)
    yield from source.iter_epoch(0, Part(), seed=0, shuffle=False, start=0)


class ViewStream(IterableDataset):
    """Messages ``{"shard", "positions", "views" [b, A, 3, S, S] uint8, "meta"}`` and ``{"shard", "end", ...}``."""

    def __init__(self, jobs: Sequence[Job], views: ViewSettings, batch_size: int) -> None:
        super().__init__()
        self.jobs, self.views, self.batch_size = list(jobs), views, batch_size

    def parts(self, job: Job, workers: int) -> int:
        """How many ``end`` messages shard ``job`` gets: one per worker for list shards, one for a tar."""
        return max(workers, 1) if job.url is None else 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for n, job in enumerate(self.jobs):
            if job.url is None:
                mine: Iterator[tuple[int, RawSample]] = ((p, job.samples[p])
                                                         for p in range(worker, len(job.samples), workers))
            elif n % workers == worker:
                mine = enumerate(_tar_samples(job.url))
            else:
                continue
            yield from self._shard(job, mine, worker)

    def _shard(self, job: Job, samples: Iterator[tuple[int, RawSample]], worker: int) -> Iterator[dict[str, Any]]:
        batch: list[tuple[int, dict[str, Any], torch.Tensor]] = []
        skipped: list[dict[str, Any]] = []
        read = 0
        v = self.views
        for pos, s in samples:
            read += 1
            try:
                meta = sample_meta(s)
                views = make_views(s.image, v.size, v.augment, crop_range=v.crop_range, resize=v.resize,
                                   max_pixels=v.max_pixels)
            except SKIPPABLE as e:
                reason = f"{type(e).__name__}: {e}"
                skipped.append({"position": pos, "key": s.key, "reason": reason})
                if len(skipped) <= 20:
                    warnings.warn(f"skipped sample {s.key}: {reason}", stacklevel=2)
                continue
            batch.append((pos, meta, views))
            if len(batch) == self.batch_size:
                yield _batch(job.shard, batch)
                batch = []
        if batch:
            yield _batch(job.shard, batch)
        yield {"shard": job.shard, "end": True, "worker": worker, "read": read, "skipped": skipped}


def _batch(shard: int, items: list[tuple[int, dict[str, Any], torch.Tensor]]) -> dict[str, Any]:
    return {"shard": shard, "positions": [p for p, _, _ in items], "meta": [m for _, m, _ in items],
            "views": torch.stack([v for _, _, v in items])}


def make_loader(stream: ViewStream, workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)
