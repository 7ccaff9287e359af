"""Training data: WebDataset shards, CSV/TSV files and captioned image folders, as one resumable stream.

Every source yields raw samples (image bytes or path, caption) in an order fixed by (seed, epoch); each
process and each loader worker takes its own share (shards when there are enough, else every k-th sample).
Workers decode, skip and count unreadable samples (decompression bombs included), and batch exactly
``batch_size`` good samples, so batches have the same shape on every rank. Each batch carries its worker's
position (epoch, raw samples read, samples skipped); the trainer keeps the position of the last batch it
*used* from every worker, and a resumed stream starts exactly there: no sample is repeated or lost.
With ``workers=0`` the resumed order is bit-identical to an uninterrupted run.
"""


from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from toklip.core.errors import ConfigError, InputError
from toklip.data.sources import DataError, ListSource, Part, RawSample, Source, _mix, decode_image, read_caption

# ---------------------------------------------------------------------------------------------- the stream
class ImageText:
    """Decode + collate of image-caption samples: ``{"images" [B,3,S,S], "text_ids", "captions"}`` batches, each
    image through the model's own preprocessing (``decode_image``) and optional ``transform``."""

    def __init__(self, *, image_size: int, tokenizer: Callable[[list[str]], Tensor], resize_mode: str = "shortest",
                 max_pixels: int | None = None, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.image_size, self.tokenizer, self.resize_mode = image_size, tokenizer, resize_mode
        self.max_pixels, self.transform = max_pixels, transform

    def decode(self, s: RawSample) -> tuple[Tensor, str]:
        caption = read_caption(s.caption)
        image = decode_image(s.image, self.image_size, self.resize_mode, self.max_pixels)
        if self.transform is not None:
            image = self.transform(image)
        return image, caption

    def collate(self, items: list[tuple[Tensor, str]]) -> dict[str, Any]:
        captions = [c for _, c in items]
        return {"images": torch.stack([i for i, _ in items]), "text_ids": self.tokenizer(captions), "captions": captions}


class BatchStream(IterableDataset):
    """Endless batches of one process's share, epoch after epoch: ``collate([decode(sample), ...])`` plus
    ``"state"``. ``decode`` raising InputError/OSError/ValueError skips the sample (counted, warned)."""

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int,
        decode: Callable[[RawSample], Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.source, self.batch_size, self.decode, self.collate = source, batch_size, decode, collate
        self.rank, self.world, self.workers = rank, world, workers
        self.seed, self.shuffle = seed, shuffle
        self.resume: dict[int, dict[str, int]] = {}
        if isinstance(source, ListSource) and source.num_samples < world * max(workers, 1):
            raise ConfigError(
                f"{source.describe()} has fewer samples than processes x loader workers ({world} x {max(workers, 1)})"
            )

    def set_resume(self, positions: dict[int, dict[str, int]]) -> None:
        """Start each worker at its saved position ({worker: {"epoch", "pos", "skipped", "seen"}})."""
        self.resume = {int(k): dict(v) for k, v in positions.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            yield from self._batches(worker, workers)
        except DataError as e:
            if info is None:
                raise
            # in a loader worker: hand the message over as a batch (iter_batches raises it in the main process),
            # so the error reads as one clear line rather than DataLoader's re-raised worker traceback
            yield {"data_error": str(e)}

    def _batches(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        part = Part(self.rank, self.world, worker, workers)
        st = self.resume.get(worker, {})
        epoch, pos = int(st.get("epoch", 0)), int(st.get("pos", 0))
        skipped, seen = int(st.get("skipped", 0)), int(st.get("seen", 0))
        items: list[Any] = []
        while True:
            start, good, read = pos, 0, 0
            for s in self.source.iter_epoch(epoch, part, seed=self.seed, shuffle=self.shuffle, start=start):
                pos += 1
                read += 1
                try:
                    item = self.decode(s)
                except (InputError, OSError, ValueError, UnicodeDecodeError) as e:
                    skipped += 1
                    if skipped <= 20 or skipped % 1000 == 0:
                        warnings.warn(f"skipped sample {s.key}: {e} ({skipped} skipped so far)", stacklevel=2)
                    continue
                good += 1
                seen += 1
                items.append(item)
                if len(items) == self.batch_size:
                    batch = self.collate(items)
                    batch["state"] = {"worker": worker, "epoch": epoch, "pos": pos, "skipped": skipped, "seen": seen}
                    yield batch
                    items = []
            if start == 0 and good == 0:
                what = "is empty" if read == 0 else f"has no readable sample ({read} skipped as unreadable)"
                errors = getattr(self.source, "read_errors", 0)
                if errors:
                    what += f"; {errors} shard read error(s), see the warnings above"
                raise DataError(f"{self.source.describe()}: the share of {part} {what} in epoch {epoch}")
            epoch, pos = epoch + 1, 0


class DataPosition:
    """The position of every worker of this process, from the batches the trainer has used."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.workers: dict[int, dict[str, int]] = {int(k): dict(v) for k, v in (saved or {}).items()}

    def update(self, state: dict[str, int]) -> None:
        self.workers[int(state["worker"])] = {k: int(v) for k, v in state.items() if k != "worker"}

    @property
    def epoch(self) -> float:
        """Epochs completed, as a fraction (lowest worker), for logs."""
        if not self.workers:
            return 0.0
        return float(min(w["epoch"] for w in self.workers.values()))

    @property
    def skipped(self) -> int:
        return sum(w.get("skipped", 0) for w in self.workers.values())

    @property
    def seen(self) -> int:
        return sum(w.get("seen", 0) for w in self.workers.values())

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {str(k): dict(v) for k, v in sorted(self.workers.items())}


def iter_batches(loader: Any) -> Iterator[dict[str, Any]]:
    """The loader's batches; a worker's DataError is raised here, in the main process, with its own message."""
    for batch in loader:
        if "data_error" in batch:
            raise DataError(batch["data_error"])
        yield batch


def make_loader(stream: BatchStream, workers: int) -> DataLoader:
    """A loader over the stream. Its own generator (seed, rank) gives the workers their seeds, so starting it never
    draws from the global RNG (a resumed run's global RNG stays where the checkpoint left it) and ranks differ."""
    generator = torch.Generator().manual_seed(_mix(stream.seed, stream.rank))
    return DataLoader(
        stream, batch_size=None, num_workers=workers, persistent_workers=False, generator=generator,
        pin_memory=torch.cuda.is_available(), prefetch_factor=2 if workers else None,
    )
