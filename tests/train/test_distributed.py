"""Two CPU processes (gloo) against one: gathered contrastive features, DDP, FSDP2, rank-0 checkpoints, resume.

The single-process run takes batches of 4; each of the 2 processes takes 2 with ``data.shuffle=false``, so
rank 0 reads samples 0, 2 and rank 1 reads 1, 3: the global batch is the same set of 4 samples. The CLIP
loss is invariant to the order inside the batch, so the losses and the updated weights must agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("webdataset", reason="training needs the train extra: pip install 'toklip[train]'")

from safetensors.torch import load_file  # noqa: E402

from toklip.train.trainer import Trainer  # noqa: E402

from .conftest import (  # noqa: E402
    REPO,
    base_overrides,
    isolated,
    load_config,
    make_folder,
    read_metrics,
    subprocess_env,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="needs torch.distributed with gloo"),
]

STEPS = 3
TIMEOUT = 300


def overrides(data, out, *, batch_size, steps, strategy="auto"):
    return base_overrides(data, out, **{
        "data.batch_size": batch_size, "data.shuffle": False, "train.steps": steps, "train.ckpt_every": 1,
        "train.keep_last": STEPS, "optim.schedule": "const", "optim.warmup": 0, "dist.strategy": strategy,
        "train.deterministic": False,
        # Adam's first steps move every weight by ~lr * sign(grad): a parameter whose gradient is rounding noise
        # (~1e-9) would move by +-lr in one run and -+lr in the other, so the comparison would test the sign of
        # noise (it did, on some CPUs: 1.7e-5 apart with lr 1e-5). A larger eps damps updates of noise-level
        # gradients and leaves real ones (>> 1e-3) as they are.
        "optim.eps": 1e-3})


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def weights(out: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / name))


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference (in this process) and `toklip train` under torchrun with DDP (2 steps)."""
    base = tmp_path_factory.mktemp("dist")
    data = make_folder(base / "data", 8)
    single = base / "single"
    with isolated():
        Trainer(load_config(overrides(data, single, batch_size=4, steps=STEPS)), echo=lambda m: None).fit()
    ddp = base / "ddp"
    proc = torchrun(["-m", "toklip.train.cli", *overrides(data, ddp, batch_size=2, steps=2)], REPO)
    return {"base": base, "data": data, "single": single, "ddp": ddp, "ddp_stdout": proc.stdout}


def test_ddp_loss_gathers_features_and_matches_one_process(runs):
    single, ddp = losses(runs["single"]), losses(runs["ddp"])
    assert len(ddp) == 2  # rank 0 alone writes metrics.jsonl
    # the contrastive term sees all 4 samples on every rank (gathered with gradients), not 2 + 2
    for a, b in zip(read_metrics(runs["ddp"]), read_metrics(runs["single"])):
        assert a["contrastive_loss"] == pytest.approx(b["contrastive_loss"], rel=1e-5, abs=1e-6)
        assert a["distill_loss"] == pytest.approx(b["distill_loss"], rel=1e-5, abs=1e-6)
    assert ddp == pytest.approx(single[:2], rel=1e-5)
    for step in (1, 2):
        assert max_diff(weights(runs["ddp"], step), weights(runs["single"], step)) < 1e-5


def test_ddp_checkpoints_hold_every_rank_and_are_written_once(runs):
    stdout = runs["ddp_stdout"]
    assert stdout.count("checkpoint saved step=1 ") == 1 and stdout.count("checkpoint saved step=2 ") == 1
    state = json.loads((runs["ddp"] / "checkpoints" / "step_00000002" / "train_state.json").read_text())
    assert state["world_size"] == 2 and sorted(state["data"]) == ["0", "1"] and sorted(state["rng"]) == ["0", "1"]
    for rank in ("0", "1"):  # each rank's own position: 2 steps of 2 samples from its half of the data
        assert state["data"][rank]["0"] == {"epoch": 0, "pos": 4, "skipped": 0, "seen": 4}
    assert not list((runs["ddp"] / "checkpoints").glob(".*"))


# A worker for the remaining runs: one torchrun launch, several Trainers in one process group (faster than a
# launch per run). It records which ranks wrote checkpoints.
WORKER = r'''
import json, sys
import torch.distributed as dist
from toklip.train import checkpoint as ckpt
from toklip.train.config import TrainConfig
from toklip.train.trainer import Trainer

dist.init_process_group("gloo")
rank = dist.get_rank()
writes = []
original = ckpt.write_checkpoint
def recording(root, step, **kw):
    writes.append(step)
    return original(root, step, **kw)
ckpt.write_checkpoint = recording
results = {}
for job in json.loads(sys.argv[1]):
    writes.clear()
    result = Trainer(TrainConfig.load(None, job["overrides"]), echo=lambda m: None).fit(resume=job["resume"])
    results[job["name"]] = {"steps": [h["step"] for h in result.history], "writes": list(writes)}
with open(sys.argv[2] + f".{rank}.json", "w") as f:
    json.dump(results, f)
dist.destroy_process_group()
'''


def test_resume_with_two_processes_and_fsdp_matches(runs, tmp_path):
    data, single = runs["data"], runs["single"]
    resumed = tmp_path / "ddp_resumed"
    shutil.copytree(runs["ddp"], resumed)
    fsdp = tmp_path / "fsdp"
    jobs = [
        {"name": "ddp_resume", "resume": "latest", "overrides": overrides(data, resumed, batch_size=2, steps=STEPS)},
        {"name": "fsdp", "resume": None, "overrides": overrides(data, fsdp, batch_size=2, steps=2, strategy="fsdp")},
        {"name": "fsdp_resume", "resume": "latest",
         "overrides": overrides(data, fsdp, batch_size=2, steps=STEPS, strategy="fsdp")},
    ]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun([str(script), json.dumps(jobs), str(tmp_path / "report")], REPO)
    reports = [json.loads((tmp_path / f"report.{r}.json").read_text()) for r in (0, 1)]

    # DDP resumed in new Trainers on both ranks: step 3 continues the single-process run
    assert reports[0]["ddp_resume"]["steps"] == reports[1]["ddp_resume"]["steps"] == [3]
    assert losses(resumed) == pytest.approx(losses(single), rel=1e-5)
    assert max_diff(weights(resumed, 3), weights(single, 3)) < 1e-5

    # FSDP2 (fully_shard on a CPU gloo mesh) matches DDP step for step, and resumes from its own checkpoint
    assert losses(fsdp) == pytest.approx(losses(single), rel=1e-5)
    for step in (1, 2):
        assert max_diff(weights(fsdp, step), weights(runs["ddp"], step)) < 1e-6
        assert max_diff(weights(fsdp, step, "optimizer.safetensors"),
                        weights(runs["ddp"], step, "optimizer.safetensors")) < 1e-6
    assert max_diff(weights(fsdp, 3), weights(single, 3)) < 1e-5

    # only rank 0 writes checkpoints; every rank takes part in gathering them
    for job, steps in (("ddp_resume", [3]), ("fsdp", [1, 2]), ("fsdp_resume", [3])):
        assert reports[0][job]["writes"] == steps and reports[1][job]["writes"] == [], job
    assert not list((fsdp / "checkpoints").glob(".*"))
