"""Tiny training data on disk (captioned folders, CSV/TSV, img2dataset-style WebDataset shards) and tiny runs.

Every image is a small random JPEG whose caption names it ("caption 7"), so a test can tell exactly which
samples a batch holds. ``base_overrides`` is the smallest deterministic training config (toklip-test at
32 px, fp32, no progress bar) the trainer, resume and CLI tests share.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
# One intra-op thread here and in every process the tests start: the tiny model gains nothing from more, a
# busy machine makes spinning OpenMP threads many times slower, and runs in different processes only match bit
# for bit when they use the same number of threads.
THREADS = 1


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def jpeg_bytes(i: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """A small deterministic RGB JPEG (w, h) = size."""
    w, h = size
    arr = np.random.RandomState(i).randint(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def truncated_jpeg(i: int) -> bytes:
    return jpeg_bytes(i)[:200]


GARBAGE = b"this is not an image at all" * 10


def caption(i: int) -> str:
    return f"caption {i}"


def caption_index(text: str) -> int:
    return int(text.split()[-1])


def make_folder(root: Path, n: int, *, bad: dict[int, str] | None = None, json_every: int = 0,
                big: Sequence[int] = ()) -> Path:
    """``n`` images ``000i.jpg`` with captions; ``bad[i]`` in {garbage, truncated, no_caption, empty_caption}.

    ``json_every=k`` writes every k-th caption as ``{"caption": ...}`` JSON; ``big`` images are 120x120."""
    root.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    for i in range(n):
        kind = bad.get(i)
        data = {"garbage": GARBAGE, "truncated": truncated_jpeg(i)}.get(kind or "", None)
        if data is None:
            data = jpeg_bytes(i, (120, 120) if i in big else (40, 48))
        (root / f"{i:04d}.jpg").write_bytes(data)
        if kind == "no_caption":
            continue
        if kind == "empty_caption":
            (root / f"{i:04d}.txt").write_text("  \n", encoding="utf-8")
        elif json_every and i % json_every == 0:
            (root / f"{i:04d}.json").write_text(json.dumps({"caption": caption(i), "width": 40}), encoding="utf-8")
        else:
            (root / f"{i:04d}.txt").write_text(caption(i), encoding="utf-8")
    return root


def make_csv(root: Path, n: int, *, sep: str = ",", name: str = "data.csv",
             bad: dict[int, str] | None = None) -> Path:
    """A CSV/TSV of (filepath, title) with paths relative to the file (images in ``root/images``)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    lines = [sep.join(["filepath", "title"])]
    for i in range(n):
        kind = bad.get(i)
        rel = f"images/{i:04d}.jpg"
        if kind == "missing_file":
            rel = f"images/nope_{i}.jpg"
        else:
            (root / rel).write_bytes(GARBAGE if kind == "garbage" else jpeg_bytes(i))
        title = "" if kind == "empty_caption" else caption(i)
        lines.append(sep.join([rel, title]))
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_shards(root: Path, n: int, per_shard: int, *, bad: dict[int, str] | None = None, stats: bool = True,
                json_every: int = 3) -> list[Path]:
    """img2dataset layout: ``0000i.tar`` holding ``key.jpg`` + ``key.txt`` (or ``key.json``), and
    ``0000i_stats.json`` with ``successes``."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    shards = []
    for s, start in enumerate(range(0, n, per_shard)):
        path = root / f"{s:05d}.tar"
        count = 0
        with wds.TarWriter(str(path)) as w:
            for i in range(start, min(n, start + per_shard)):
                kind = bad.get(i)
                img = {"garbage": GARBAGE, "truncated": truncated_jpeg(i)}.get(kind or "", None) or jpeg_bytes(i)
                sample: dict = {"__key__": f"{i:09d}", "jpg": img}
                if kind == "empty_caption":
                    sample["txt"] = ""
                elif kind == "no_caption":
                    pass
                elif json_every and i % json_every == 0:
                    sample["json"] = {"caption": caption(i), "key": f"{i:09d}", "status": "success"}
                else:
                    sample["txt"] = caption(i)
                w.write(sample)
                count += 1
        if stats:
            (root / f"{s:05d}_stats.json").write_text(json.dumps({"count": count, "successes": count}))
        shards.append(path)
    return shards


def simple_tokenizer(captions: list[str]) -> torch.Tensor:
    """Stand-in for a text tokenizer in data tests: [B, 4] ids that keep the caption's index."""
    return torch.tensor([[caption_index(c), 1, 2, 3] for c in captions], dtype=torch.long)


def base_overrides(data: Path | str, out: Path | str, **extra: object) -> list[str]:
    """The tiny, deterministic training run the trainer tests share; ``extra`` = {"section.key": value}."""
    items = {
        "model.preset": "toklip-test",
        "model.image_size": IMAGE_SIZE,
        "data.path": str(data),
        "data.batch_size": 4,
        "data.workers": 0,
        "train.steps": 8,
        "train.out_dir": str(out),
        "train.seed": 1234,
        "train.deterministic": True,
        "train.precision": "fp32",
        "train.progress": False,
        "train.log_every": 1,
        "train.ckpt_every": 4,
        "train.keep_last": 2,
        "train.device": "cpu",
        "optim.lr": 1e-3,
        "optim.warmup": 2,
    }
    items.update({k: v for k, v in extra.items()})
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in items.items()]


def load_config(overrides: list[str]):
    from toklip.train.config import TrainConfig

    return TrainConfig.load(None, overrides)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts: offline, one thread, this checkout first on the path."""
    env = dict(os.environ)
    env.pop("TOKLIP_ATTN_BACKEND", None)
    path = [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(THREADS),
                "PYTHONPATH": os.pathsep.join(path)})
    env.update(extra)
    return env


@pytest.fixture
def folder_data(tmp_path: Path) -> Path:
    """16 clean captioned images (a whole number of batches of 4)."""
    return make_folder(tmp_path / "data", 16)


# ---------------------------------------------------------------------------------------------- reference run
REFERENCE_STEPS = 8
REFERENCE_BAD = {5: "garbage", 11: "truncated"}  # 18 files, 16 readable: 4 batches of 4 per epoch


class Interrupt(Exception):
    """Raised from the trainer's echo to stop a run right after a checkpoint, like a crash would."""


def stop_after_checkpoint(step: int):
    def echo(msg: str) -> None:
        if msg.startswith(f"checkpoint saved step={step} "):
            raise Interrupt(msg)

    return echo


def isolated():
    from toklip.core.host import PluginHost, use_host

    return use_host(PluginHost(autoload=False, strict=True))


@pytest.fixture(scope="package")
def reference(tmp_path_factory: pytest.TempPathFactory, _one_thread: None) -> dict:
    """One uninterrupted 8-step run (cosine schedule, checkpoints every 2 steps, 2 kept) that the checkpoint,
    resume and kill tests compare against. Read-only: tests that damage checkpoints copy them first."""
    import warnings

    from toklip.train.trainer import Trainer

    base = tmp_path_factory.mktemp("reference")
    data = make_folder(base / "data", 18, bad=REFERENCE_BAD)
    out = base / "run"
    overrides = base_overrides(data, out, **{"train.ckpt_every": 2})
    with isolated(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Trainer(load_config(overrides), echo=lambda m: None).fit()
    return {"data": data, "out": out, "overrides": overrides, "result": result, "metrics": read_metrics(out),
            "state": {k: v.detach().clone() for k, v in result.model.state_dict().items()}}


DETERMINISTIC_KEYS = ("step", "loss", "contrastive_loss", "distill_loss", "lr", "logit_scale", "epoch", "skipped")


def trajectory(metrics: list[dict]) -> list[tuple]:
    """What must repeat exactly between runs (not the throughput)."""
    return [tuple(m.get(k) for k in DETERMINISTIC_KEYS) for m in metrics]
