"""Output shards, each written atomically, and the test for "this shard is finished".

``OUT/shards/NNNNN.tokens.npy`` holds the indices ``[n_images, n_aug, N]`` (uint16 or int32),
``NNNNN.pooled.npy`` the pooled embeddings ``[n_images, n_aug, D]`` (fp16, with ``--features pooled``), and
``NNNNN.json`` the shard's record (sample keys, labels or captions, skipped samples, file sizes and sha256, the
run's settings fingerprint). Every file goes through :func:`toklip.core.io.atomic_write` (temporary file, fsync,
rename); the record is written last, so a shard is finished exactly when its record exists, carries this run's
fingerprint, and every file it names has the recorded size. Anything else (a SIGKILL between two files, a
stale temporary file) is redone from scratch, which gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toklip.core.io import atomic_write, atomic_write_text

UINT16_MAX_VOCAB = 65536


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every index fits (vocabularies up to 65,536 codes), else int32."""
    return np.dtype(np.uint16) if vocab_size <= UINT16_MAX_VOCAB else np.dtype(np.int32)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes and recognises the shards of one output folder."""

    def __init__(self, out: str | Path, fingerprint: str) -> None:
        self.out = Path(out)
        self.dir = self.out / "shards"
        self.fingerprint = fingerprint

    def name(self, shard: int) -> str:
        return f"{shard:05d}"

    def record_path(self, shard: int) -> Path:
        return self.dir / f"{self.name(shard)}.json"

    def read_record(self, shard: int) -> dict[str, Any] | None:
        path = self.record_path(shard)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, shard: int) -> bool:
        record = self.read_record(shard)
        if record is None or record.get("fingerprint") != self.fingerprint:
            return False
        for info in record.get("files", {}).values():
            path = self.dir / info["file"]
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                return False
        return True

    def clean_partial(self, shard: int) -> None:
        """Remove temporary files a killed writer of this shard left behind (``.NNNNN.*.tmp``)."""
        if self.dir.is_dir():
            for tmp in self.dir.glob(f".{self.name(shard)}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def write(self, shard: int, arrays: dict[str, np.ndarray], record: dict[str, Any],
              before_record: Callable[[], None] | None = None) -> dict[str, Any]:
        """Write ``arrays`` ({"tokens": ..., "pooled": ...}) then the record, each atomically; returns the record.
        ``before_record`` runs in between (the tests kill the process there)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for what, array in arrays.items():
            path = self.dir / f"{self.name(shard)}.{what}.npy"
            atomic_write(path, lambda p, a=array: _save_npy(p, a))
            files[what] = {"file": path.name, "dtype": str(array.dtype), "shape": list(array.shape),
                           "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        if before_record is not None:
            before_record()
        record = {"shard": shard, "fingerprint": self.fingerprint, **record, "files": files}
        atomic_write_text(self.record_path(shard), json.dumps(record, indent=1) + "\n")
        return record


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
