"""Which output shard holds which inputs, and which rank writes it: fixed by the inputs alone.

A WebDataset input gives one output shard per input tar; a list input (folders, CSV, JSONL) is cut into shards of
``shard_size`` samples in its sorted order. Shard ``i`` belongs to rank ``i % world``, so the shard contents never
depend on the number of processes, and a rerun (any world size) finds the same shards to skip or redo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from toklip.data.sources import ListSource, RawSample, Source, WebDatasetSource


@dataclass(frozen=True)
class Job:
    """One output shard: a slice of a list source, or one WebDataset tar."""

    shard: int
    samples: tuple[RawSample, ...] = ()
    url: str | None = None

    @property
    def size_hint(self) -> int | None:
        return len(self.samples) if self.url is None else None


def plan_jobs(source: Source, shard_size: int) -> list[Job]:
    if isinstance(source, WebDatasetSource):
        return [Job(shard=i, url=u) for i, u in enumerate(source.urls)]
    if not isinstance(source, ListSource):
        raise TypeError(f"cannot plan shards for a {type(source).__name__}")
    samples = source.samples
    return [Job(shard=i, samples=tuple(samples[s : s + shard_size]))
            for i, s in enumerate(range(0, len(samples), shard_size))]


def jobs_for_rank(jobs: Sequence[Job], rank: int, world: int) -> list[Job]:
    return [j for j in jobs if j.shard % world == rank]


def plan_digest(jobs: Sequence[Job]) -> str:
    """sha256 over every shard's inputs (keys and image references, or tar URLs): a changed input set is caught."""
    h = hashlib.sha256()
    for job in jobs:
        h.update(f"shard {job.shard}\n".encode())
        if job.url is not None:
            h.update(f"url {job.url}\n".encode())
        for s in job.samples:
            h.update(f"{s.key}\t{s.image if isinstance(s.image, str) else type(s.image).__name__}\n".encode())
    return h.hexdigest()
