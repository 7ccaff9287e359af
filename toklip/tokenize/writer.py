"""Output shards, each written atomically, and the test for "this shard is finished".

``OUT/shards/NNNNN.tokens.npy`` holds the indices ``[n_images, n_aug, N]`` (uint16 or int32),
``NNNNN.pooled.npy`` the pooled embeddings ``[n_images, n_aug, D]`` (fp16, with ``--features pooled``), and
``NNNNN.features.npy`` the per-token features ``[n_images, n_aug, N, D]`` (fp16, with ``--features tokens``) and
``NNNNN.json`` the shard's record (sample keys, labels or captions, skipped samples, file sizes and sha256, the
run's settings fingerprint). With ``--format webdataset`` the arrays go into one tar per shard instead,
``NNNNN.tar``, one sample per image: ``<key>.indices.npy`` ``[n_aug, N]``, ``<key>.cls`` (label) or ``<key>.txt``
(caption), ``<key>.pooled.npy`` / ``<key>.features.npy``, and ``<key>.json`` (the input key); the record lists
each member's byte range so :class:`~toklip.data.TokenDataset` reads single samples without unpacking. Every file goes through :func:`toklip.core.io.atomic_write` (temporary file, fsync,
rename); the record is written last, so a shard is finished exactly when its record exists, carries this run's
fingerprint, and every file it names has the recorded size. Anything else (a SIGKILL between two files, a
stale temporary file) is redone from scratch, which gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toklip.core.io import atomic_write, atomic_write_text

UINT16_MAX_VOCAB = 65536
FORMATS = ("array", "webdataset")
# webdataset member names of each stored array
MEMBER = {"tokens": "indices.npy", "pooled": "pooled.npy", "features": "features.npy"}
TAR_MTIME = 0.0  # fixed metadata: the same shard gives the same tar bytes on every run


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

    def __init__(self, out: str | Path, fingerprint: str, output_format: str = "array") -> None:
        if output_format not in FORMATS:
            from toklip.core.errors import ConfigError

            raise ConfigError(f"--format {output_format!r} is not one of {', '.join(FORMATS)}")
        self.out = Path(out)
        self.dir = self.out / "shards"
        self.fingerprint = fingerprint
        self.format = output_format

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
        if self.format == "webdataset":
            path = self.dir / f"{self.name(shard)}.tar"
            atomic_write(path, lambda p: _save_tar(p, shard, arrays, record))
            files["tar"] = {"file": path.name, "arrays": {w: {"dtype": str(a.dtype), "shape": list(a.shape)}
                                                         for w, a in arrays.items()},
                            "bytes": path.stat().st_size, "sha256": file_sha256(path)}
            record = {**record, "members": tar_members(path)}
        else:
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


def sample_key(shard: int, row: int) -> str:
    """The webdataset key of row ``row`` of shard ``shard``: positional, so input keys with dots or slashes (which
    webdataset would split on) never break the grouping; the input key is in ``<key>.json``."""
    return f"{shard:05d}_{row:07d}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _save_tar(path: Path, shard: int, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
    from webdataset import TarWriter

    labels, captions = record.get("labels"), record.get("captions")
    with open(path, "wb") as f, TarWriter(f, user="toklip", group="toklip", mtime=TAR_MTIME, encoder=False) as tar:
        for row, key in enumerate(record["keys"]):
            sample: dict[str, Any] = {"__key__": sample_key(shard, row)}
            for what, array in arrays.items():
                sample[MEMBER[what]] = npy_bytes(array[row])
            if labels is not None:
                sample["cls"] = str(labels[row]).encode()
            if captions is not None and captions[row] is not None:
                sample["txt"] = str(captions[row]).encode("utf-8")
            sample["json"] = json.dumps({"key": key}).encode("utf-8")
            tar.write(sample)


def tar_members(path: Path) -> dict[str, list[list[int]]]:
    """``{"indices.npy": [[offset, size], ...] (one per row), ...}``: where each stored array's bytes lie in the tar."""
    members: dict[str, list[list[int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            _, _, suffix = info.name.partition(".")
            if suffix.endswith(".npy"):
                members.setdefault(suffix, []).append([info.offset_data, info.size])
    return members
