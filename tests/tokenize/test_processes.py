"""Faults and scale in real processes: SIGKILL mid-run then --resume gives byte-identical shards, and two torchrun
processes write exactly what one process writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import THREADS, make_class_folders, shard_bytes

pytest.importorskip("webdataset", reason="the readers need the train extra: pip install 'toklip[train]'")
REPO = Path(__file__).resolve().parents[2]
ARGS = ["--vq", "llamagen-test", "--image-size", "32", "--augment", "flip", "--shard-size", "2",
        "--batch-size", "2", "--workers", "0", "--device", "cpu", "--dtype", "fp32", "--quiet"]


def env() -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    e.pop("TOKLIP_TEST_KILL_BEFORE_RECORD", None)
    return e


def tokenize(src: Path, out: Path, *extra: str, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toklip.tokenize", str(src), str(out), *ARGS, *extra],
                          env={**env(), **env_extra}, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)  # 6 images -> 3 shards of 2
    ref = tokenize(src, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "out"
    killed = tokenize(src, out, TOKLIP_TEST_KILL_BEFORE_RECORD="1")  # shard 1's arrays on disk, no record
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "shards" / "00000.json").is_file() and (out / "shards" / "00001.tokens.npy").is_file()
    assert not (out / "shards" / "00001.json").exists() and not (out / "manifest.json").exists()

    resumed = tokenize(src, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 to write, 1 already finished" in resumed.stdout
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "ref"))
    assert {k: v for k, v in a.items() if k != "command"} == {k: v for k, v in b.items() if k != "command"}


@pytest.mark.slow
def test_two_torchrun_processes_write_what_one_process_writes(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)
    one = tokenize(src, tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
         "-m", "toklip.tokenize", str(src), str(tmp_path / "two"), *ARGS],
        env=env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "rank 0/2" in two.stdout and "rank 1/2" in two.stdout
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")
    m = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert m["counts"]["images"] == 6 and m["counts"]["shards"] == 3
