"""The vlm task under FSDP2 on two CPU processes (gloo): TokLIP's blocks and the LLM's decoder layers are shard
units, a stage-2 run (whole LLM + projector) matches the same run under DDP, and a resumed FSDP run repeats the
uninterrupted one exactly, from checkpoints that hold the trained tensors alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ..train.conftest import REPO, subprocess_env
from .conftest import write_llava

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="needs torch.distributed with gloo"),
]

# One torchrun launch, several Trainers in one process group (a launch per run is slower).
WORKER = r'''
import json, sys
import torch
import torch.distributed as dist
from toklip.train.config import TrainConfig
from toklip.train.trainer import Trainer

torch.set_num_threads(1)
dist.init_process_group("gloo")
for job in json.loads(sys.argv[1]):
    trainer = Trainer(TrainConfig.from_dict(job["config"]), echo=lambda m: None)
    result = trainer.fit(resume=job["resume"])
    if dist.get_rank() == 0 and job.get("units"):
        from torch.distributed.fsdp import FSDPModule
        sharded = [type(m).__name__ for m in result.model.modules() if isinstance(m, FSDPModule)]
        with open(job["units"], "w") as f:
            json.dump(sharded, f)
dist.destroy_process_group()
'''


def _config(data: Path, llm_dir: Path, out: Path, *, strategy: str, steps: int) -> dict:
    return {
        "task": {"name": "vlm", "tokenizer": "toklip-test", "llm": str(llm_dir), "max_length": 128, "stage": 2},
        "data": {"path": str(data), "batch_size": 2, "workers": 0, "shuffle": False},
        "optim": {"lr": 2e-3, "warmup": 0, "schedule": "const", "weight_decay": 0.0, "eps": 1e-3},
        "train": {"steps": steps, "ckpt_every": 2, "seed": 0, "device": "cpu", "progress": False,
                  "out_dir": str(out), "log_every": 1, "deterministic": False},
        "dist": {"strategy": strategy},
    }


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fsdp_stage_2_matches_ddp_and_resumes_exactly(llm_dir, tmp_path):
    data = write_llava(tmp_path / "llava", 8)
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    units = tmp_path / "units.json"
    jobs = [
        {"config": _config(data, llm_dir, ddp, strategy="ddp", steps=4), "resume": None},
        {"config": _config(data, llm_dir, fsdp, strategy="fsdp", steps=4), "resume": None, "units": str(units)},
        {"config": _config(data, llm_dir, resumed, strategy="fsdp", steps=2), "resume": None},
        {"config": _config(data, llm_dir, resumed, strategy="fsdp", steps=4), "resume": "latest"},
    ]
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
           json.dumps(jobs)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    sharded = json.loads(units.read_text())
    # toklip-test's two token-encoder blocks and two text blocks, the tiny LLM's two decoder layers
    assert sharded == ["FSDPBlock"] * 2 + ["FSDPResidualAttentionBlock"] * 2 + ["FSDPLlamaDecoderLayer"] * 2
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-5)
    assert _losses(resumed) == _losses(fsdp)  # exact: same batches, RNG and optimizer state after resume
    a = load_file(fsdp / "checkpoints" / "step_00000004" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step_00000004" / "model.safetensors")
    c = load_file(ddp / "checkpoints" / "step_00000004" / "model.safetensors")
    assert set(a) == set(b) == set(c) and any(k.startswith("llm.") for k in a)  # stage 2: the LLM trained
    assert not any(k.startswith("features.") for k in a)  # frozen TokLIP: rebuilt on resume, not saved
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert float((a[k].float() - c[k].float()).abs().max()) < 1e-5, k
