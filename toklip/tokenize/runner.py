"""``toklip tokenize``: images -> token shards, one process or many (torchrun), resumable at any point.

Each rank (RANK / WORLD_SIZE from torchrun; one process without them) takes the shards ``i % world == rank``,
skips the finished ones, decodes in loader workers, encodes in batches and writes each shard atomically. No process
group is needed: ranks never talk. Every rank checks after its last shard whether all shards are finished, and the
one that sees that (the last to finish) merges the manifest, so it appears exactly when the dataset is complete.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toklip.core.errors import ConfigError
from toklip.data.readers import ImageSet, open_images
from toklip.tokenize.augment import AUGMENTS, VIEW_NAMES, check_augment, to_model_range
from toklip.tokenize.budget import SizeEstimate, check_budget, check_running_total, parse_features
from toklip.tokenize.encode import Tokenizer, TokenizerSpec, build_tokenizer
from toklip.tokenize.loader import ViewSettings, ViewStream, make_loader
from toklip.tokenize.manifest import build_manifest, claim_folder, write_manifest
from toklip.tokenize.plan import Job, jobs_for_rank, plan_digest, plan_jobs
from toklip.tokenize.writer import FORMATS, ShardWriter, token_dtype

# stored array name -> the Tokenizer.features kind it holds
FEATURE_ARRAYS = {"pooled": "pooled", "features": "tokens"}
# Test-only fault injection: SIGKILL this process after shard N's arrays are written and before its record.
KILL_ENV = "TOKLIP_TEST_KILL_BEFORE_RECORD"


@dataclass
class TokenizeOptions:
    augment: str = "center"
    crop_range: float = 1.1
    resize: str = "adm"
    features: str = "none"  # "none", "pooled", "tokens" or "pooled,tokens"
    batch_size: int = 64
    workers: int = 0
    shard_size: int = 10_000
    max_pixels: int | None = None
    output_format: str = "array"  # or "webdataset": one tar per shard
    max_bytes: int | None = None  # refuse output (estimated, or written so far) above this
    confirm_features: bool = False  # --yes: write per-token features whatever their size (disk space permitting)


@dataclass
class Summary:
    out: Path
    rank: int
    world: int
    shards_total: int
    shards_written: int
    shards_skipped: int
    images: int = 0
    skipped: int = 0
    bytes: int = 0  # array bytes this rank wrote (headers and tar padding aside)
    seconds: float = 0.0
    manifest: Path | None = None
    shard_records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def size_estimate(jobs: list[Job], settings: dict[str, Any], opts: TokenizeOptions) -> SizeEstimate:
    """The output size this run will write (the array bytes; ``.npy`` headers and tar padding aside)."""
    known = all(j.size_hint is not None for j in jobs)
    feats = settings["features"]
    return SizeEstimate(images=sum(j.size_hint or 0 for j in jobs) if known else None,
                        views=settings["augment"]["variants"], tokens=settings["tokens_per_image"],
                        index_bytes=np.dtype(settings["dtype"]).itemsize, kinds=parse_features(opts.features),
                        pooled_dim=feats.get("pooled", {}).get("dim", 0), token_dim=feats.get("tokens", {}).get("dim", 0))


def run_settings(images: ImageSet, jobs: list[Job], tok: Tokenizer, opts: TokenizeOptions) -> dict[str, Any]:
    """Everything that decides the bytes of a shard (the fingerprint's input)."""
    kinds = parse_features(opts.features)
    h, w = tok.grid
    dims = {k: int(v.shape[-1]) for k, v in tok.features(torch.zeros(1, h * w, dtype=torch.long), kinds).items()} \
        if kinds else {}
    features: dict[str, Any] = {}
    if "pooled" in dims:
        features["pooled"] = {"dtype": "float16", "dim": dims["pooled"], "shape": "[n_images, n_views, D]"}
    if "tokens" in dims:
        features["tokens"] = {"dtype": "float16", "dim": dims["tokens"], "shape": "[n_images, n_views, N, D]"}
    return {
        "inputs": {"path": images.path, "type": images.kind, "shards": len(jobs), "plan_sha256": plan_digest(jobs)},
        "tokenizer": {**tok.spec.to_json(), "weights_sha256": tok.weights_sha256, "model_sha256": tok.model_sha256,
                      "vocab_size": tok.vocab_size, "downsample": tok.downsample},
        "image_size": tok.image_size, "grid": [h, w], "tokens_per_image": h * w,
        "augment": {"name": opts.augment, "variants": AUGMENTS[opts.augment], "views": VIEW_NAMES[opts.augment],
                    "crop_range": opts.crop_range if opts.augment == "ten-crop" else None, "resize": opts.resize},
        "precision": tok.describe_precision(),
        "dtype": str(token_dtype(tok.vocab_size)),
        "features": features,
        "output_format": opts.output_format,
        "shard_size": opts.shard_size if images.kind != "webdataset" else None,
        "classes": images.classes,
    }


class _Pending:
    """A shard being assembled from the loader's messages (in any order)."""

    def __init__(self, parts: int) -> None:
        self.parts, self.ends, self.read = parts, 0, 0
        self.rows: list[tuple[int, np.ndarray, dict[str, np.ndarray], dict[str, Any]]] = []
        self.skipped: list[dict[str, Any]] = []


def tokenize_dataset(
    images: str | Path | list[str],
    out: str | Path,
    spec: TokenizerSpec,
    *,
    options: TokenizeOptions | None = None,
    image_size: int | None = None,
    precision: str = "auto",
    device: str = "auto",
    input_type: str = "auto",
    image_key: str | None = None,
    caption_key: str | None = None,
    progress: bool = True,
    command: str | None = None,
    echo: Any = print,
) -> Summary:
    """Tokenize ``images`` into ``out`` (see the module docstring); returns what this rank did."""
    opts = options or TokenizeOptions()
    check_augment(opts.augment, opts.crop_range, opts.resize)
    parse_features(opts.features)
    if opts.output_format not in FORMATS:
        raise ConfigError(f"--format {opts.output_format!r} is not one of {', '.join(FORMATS)}")
    if opts.batch_size < 1 or opts.shard_size < 1 or opts.workers < 0:
        raise ConfigError("--batch-size and --shard-size must be >= 1 and --workers >= 0")
    rank, world, local_rank = world_from_env()
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    image_set = open_images(images, input_type, image_key=image_key, caption_key=caption_key)
    jobs = plan_jobs(image_set.source, opts.shard_size)
    tok = build_tokenizer(spec, device=device, image_size=image_size, precision=precision)
    settings = run_settings(image_set, jobs, tok, opts)
    out = Path(out).expanduser()
    estimate = size_estimate(jobs, settings, opts)
    if rank == 0 and (estimate.kinds or opts.max_bytes is not None):
        echo(estimate.describe())  # before anything is written, so a too-large request is seen first
    check_budget(estimate, max_bytes=opts.max_bytes, confirmed=opts.confirm_features, out=out, pending_images=None)
    writer = ShardWriter(out, claim_folder(out, settings), opts.output_format)
    mine = jobs_for_rank(jobs, rank, world)
    pending = [j for j in mine if not writer.is_done(j.shard)]
    pending_images = None if estimate.images is None else sum(j.size_hint or 0 for j in pending)
    check_budget(estimate, max_bytes=opts.max_bytes, confirmed=opts.confirm_features, out=out,
                 pending_images=pending_images)
    summary = Summary(out, rank, world, len(jobs), 0, len(mine) - len(pending))
    if rank == 0:
        echo(f"{image_set.source.describe()} -> {len(jobs)} shard(s); rank {rank}/{world}: {len(pending)} to write, "
             f"{summary.shards_skipped} already finished")
    start = time.perf_counter()
    if pending:
        _run(pending, tok, writer, opts, summary, progress and rank == 0)
    summary.seconds = time.perf_counter() - start
    summary.manifest = finish(out, jobs, writer, settings, command)
    return summary


def _run(jobs: list[Job], tok: Tokenizer, writer: ShardWriter, opts: TokenizeOptions, summary: Summary,
         progress: bool) -> None:
    from tqdm.auto import tqdm

    for job in jobs:
        writer.clean_partial(job.shard)
    views = ViewSettings(tok.image_size, opts.augment, opts.crop_range, opts.resize, opts.max_pixels)
    stream = ViewStream(jobs, views, opts.batch_size)
    workers = opts.workers
    open_shards = {j.shard: _Pending(stream.parts(j, workers)) for j in jobs}
    n_aug, dtype = AUGMENTS[opts.augment], token_dtype(tok.vocab_size)
    kinds = parse_features(opts.features)
    budget = None if all(j.size_hint is not None for j in jobs) else opts.max_bytes  # unknown size: check as we go
    total = sum(j.size_hint for j in jobs) if all(j.size_hint is not None for j in jobs) else None
    bar = tqdm(total=total, unit="img", desc="tokenize", disable=not progress, dynamic_ncols=True)
    try:
        for msg in make_loader(stream, workers):
            state = open_shards[msg["shard"]]
            if msg.get("end"):
                state.ends += 1
                state.read += msg["read"]
                state.skipped.extend(msg["skipped"])
                bar.update(len(msg["skipped"]))
                if state.ends == state.parts:
                    _write_shard(writer, msg["shard"], open_shards.pop(msg["shard"]), n_aug, tok, dtype, summary,
                                 budget)
                    bar.set_postfix(shards=summary.shards_written, skipped=summary.skipped)
                continue
            views = msg["views"]  # [b, A, 3, S, S] uint8
            b = views.shape[0]
            flat = to_model_range(views.reshape(b * n_aug, *views.shape[2:]))
            indices = tok.indices(flat)  # [b * A, N]
            feats = {k: v.to(torch.float16).cpu().numpy() for k, v in tok.features(indices, kinds).items()} \
                if kinds else {}
            extra = {name: feats[kind].reshape(b, n_aug, *feats[kind].shape[1:])
                     for name, kind in FEATURE_ARRAYS.items() if kind in feats}
            tokens = indices.cpu().numpy().astype(dtype).reshape(b, n_aug, -1)
            for i, (pos, meta) in enumerate(zip(msg["positions"], msg["meta"])):
                state.rows.append((pos, tokens[i], {name: a[i] for name, a in extra.items()}, meta))
            bar.update(b)
    finally:
        bar.close()


def _write_shard(writer: ShardWriter, shard: int, state: _Pending, n_aug: int, tok: Tokenizer, dtype: np.dtype,
                 summary: Summary, max_bytes: int | None = None) -> None:
    rows = sorted(state.rows, key=lambda r: r[0])
    n_tokens = tok.grid[0] * tok.grid[1]
    tokens = np.stack([r[1] for r in rows]) if rows else np.zeros((0, n_aug, n_tokens), dtype=dtype)
    arrays = {"tokens": tokens}
    for name in (rows[0][2] if rows else {}):
        arrays[name] = np.stack([r[2][name] for r in rows])
    check_running_total(summary.bytes + sum(a.nbytes for a in arrays.values()), max_bytes)
    metas = [r[3] for r in rows]
    record: dict[str, Any] = {"count": len(rows), "read": state.read, "keys": [m["key"] for m in metas],
                              "skipped": sorted(state.skipped, key=lambda s: s["position"])}
    if any("label" in m for m in metas):
        record["labels"] = [m.get("label", -1) for m in metas]
    if any("caption" in m for m in metas):
        record["captions"] = [m.get("caption") for m in metas]
    writer.write(shard, arrays, record, before_record=_fault_hook(shard))
    summary.shards_written += 1
    summary.bytes += sum(a.nbytes for a in arrays.values())
    summary.images += len(rows)
    summary.skipped += len(state.skipped)
    summary.shard_records.append({"shard": shard, "count": len(rows), "skipped": len(state.skipped)})


def _fault_hook(shard: int) -> Any:
    if os.environ.get(KILL_ENV) != str(shard):
        return None
    return lambda: os.kill(os.getpid(), signal.SIGKILL)  # arrays on disk, no record: a half-written shard


def finish(out: Path, jobs: list[Job], writer: ShardWriter, settings: dict[str, Any],
           command: str | None) -> Path | None:
    """Merge the manifest when every shard is finished (whichever rank gets here last); None otherwise."""
    from toklip._version import __version__

    if not all(writer.is_done(j.shard) for j in jobs):
        return None
    records = [writer.read_record(j.shard) for j in jobs]
    _, world, _ = world_from_env()
    extra = {"toklip_version": __version__, "command": command, "world_size": world,
             "labels_and_captions": "per shard in shards/NNNNN.json ('keys', 'labels' or 'captions')"}
    return write_manifest(out, build_manifest(settings, [r for r in records if r is not None], extra))
