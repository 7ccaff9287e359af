"""Read ``toklip tokenize`` output as a torch Dataset: memory-mapped shards, one augmentation per access.

``ds[i]`` is ``{"indices": LongTensor [N], "label": int}`` for class-labelled inputs, ``{"indices", "caption": str}``
for captioned ones (both when both exist), plus ``"pooled"`` (float32 [D]) with ``with_pooled=True`` and
``"features"`` (float32 [N, D], the per-token features) with ``with_features=True`` when the run stored them. The
view is drawn at random per access (as LlamaGen's loader does), or fixed with ``view=k``.

Both output formats read the same way. Array shards are opened lazily with ``np.load(mmap_mode="r")``; WebDataset
shards (``--format webdataset``) are memory-mapped tars whose member byte ranges the shard record lists, so one
sample is one small ``np.load`` of its ``.npy`` member. Never with pickle, in whichever process reads them, so the
dataset is cheap to send to DataLoader workers.
"""

from __future__ import annotations

import bisect
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from toklip.core.errors import ConfigError

MANIFEST = "manifest.json"


class TokenDataset(Dataset):
    """A tokenized dataset folder (``OUT`` of ``toklip tokenize``); see the module docstring."""

    def __init__(self, root: str | Path, *, view: int | str = "random", with_pooled: bool = False,
                 with_features: bool = False, seed: int | None = None) -> None:
        self.root = Path(root).expanduser()
        path = self.root / MANIFEST
        if not path.is_file():
            partial = (self.root / "settings.json").is_file()
            hint = ("the run has not finished every shard yet: rerun the same command to complete it" if partial
                    else "is this a `toklip tokenize` output folder?")
            raise ConfigError(f"{path} does not exist ({hint})")
        self.manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != "toklip-tokens":
            raise ConfigError(f"{path} is not a toklip tokens manifest (format {self.manifest.get('format')!r})")
        self.num_views = int(self.manifest["augment"]["variants"])
        if view != "random" and not (isinstance(view, int) and 0 <= view < self.num_views):
            raise ConfigError(f"view must be 'random' or an int in [0, {self.num_views - 1}], got {view!r}")
        if with_pooled and not self.manifest.get("features", {}).get("pooled"):
            raise ConfigError(f"{self.root} has no pooled features (tokenize with --features pooled)")
        if with_features and not self.manifest.get("features", {}).get("tokens"):
            raise ConfigError(f"{self.root} has no per-token features (tokenize with --features tokens)")
        self.view, self.with_pooled, self.with_features = view, with_pooled, with_features
        self.output_format = self.manifest.get("output_format", "array")
        self._rng = random.Random(seed) if seed is not None else random
        self.shards = self.manifest["shards"]
        self.offsets = np.cumsum([0] + [s["count"] for s in self.shards]).tolist()
        self._records: dict[int, dict[str, Any]] = {}
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self._tars: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ metadata
    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.manifest["grid"]
        return int(h), int(w)

    @property
    def classes(self) -> list[str] | None:
        return self.manifest.get("classes")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"], state["_records"], state["_tars"] = {}, {}, {}  # reopened by each worker
        if state["_rng"] is random:
            state["_rng"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._rng is None:
            self._rng = random

    # ------------------------------------------------------------------ access
    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (position in ``manifest["shards"]``, row in that shard)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        s = bisect.bisect_right(self.offsets, i) - 1
        return s, i - self.offsets[s]

    def array(self, s: int, what: str = "tokens") -> np.ndarray:
        """Shard ``s``'s ``tokens`` [n, A, N] (``pooled`` [n, A, D], ``features`` [n, A, N, D]) array: memory-mapped
        for array shards, read whole from a WebDataset shard."""
        key = (s, what)
        if key not in self._arrays:
            if self.output_format == "webdataset":
                n = int(self.shards[s]["count"])
                rows = [self._member(s, r, what) for r in range(n)]
                self._arrays[key] = np.stack(rows) if rows else self._empty(s, what)
            else:
                self._arrays[key] = np.load(self.root / self.shards[s][f"{what}_file"], mmap_mode="r",
                                            allow_pickle=False)
        return self._arrays[key]

    def _empty(self, s: int, what: str) -> np.ndarray:
        info = self.record(s)["files"]["tar"]["arrays"][what]
        return np.zeros(info["shape"], dtype=info["dtype"])

    def _member(self, s: int, row: int, what: str) -> np.ndarray:
        """Row ``row`` of array ``what`` of WebDataset shard ``s``, from its byte range in the tar."""
        from toklip.tokenize.writer import MEMBER

        if s not in self._tars:
            self._tars[s] = np.memmap(self.root / self.shards[s]["tar_file"], dtype=np.uint8, mode="r")
        offset, size = self.record(s)["members"][MEMBER[what]][row]
        return np.load(io.BytesIO(self._tars[s][offset : offset + size].tobytes()), allow_pickle=False)

    def _row(self, s: int, row: int, what: str) -> np.ndarray:
        if self.output_format == "webdataset" and (s, what) not in self._arrays:
            return self._member(s, row, what)
        return np.asarray(self.array(s, what)[row])

    def record(self, s: int) -> dict[str, Any]:
        if s not in self._records:
            name = f"{int(self.shards[s]['shard']):05d}.json"
            self._records[s] = json.loads((self.root / "shards" / name).read_text(encoding="utf-8"))
        return self._records[s]

    def tokens(self, i: int) -> np.ndarray:
        """All views of image ``i``: [A, N] (the stored dtype)."""
        s, row = self.locate(i)
        return self._row(s, row, "tokens")

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, row = self.locate(i)
        v = self._rng.randrange(self.num_views) if self.view == "random" else int(self.view)
        item: dict[str, Any] = {"indices": torch.from_numpy(self._row(s, row, "tokens")[v].astype(np.int64))}
        rec = self.record(s)
        if "labels" in rec:
            item["label"] = int(rec["labels"][row])
        if "captions" in rec:
            item["caption"] = rec["captions"][row]
        if self.with_pooled:
            item["pooled"] = torch.from_numpy(self._row(s, row, "pooled")[v].astype(np.float32))
        if self.with_features:
            item["features"] = torch.from_numpy(self._row(s, row, "features")[v].astype(np.float32))
        return item

    def key(self, i: int) -> str:
        """The input sample key of image ``i`` (its path relative to the input, or shard URL and key)."""
        s, row = self.locate(i)
        return self.record(s)["keys"][row]
