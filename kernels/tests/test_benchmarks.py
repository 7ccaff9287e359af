"""The benchmark scripts run end to end (``--smoke``: tiny shapes on the CPU, Triton in the interpreter) and
write well-formed result files, so the one GPU run that matters does not die on a script bug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = [
    pytest.mark.triton_interpret,
    pytest.mark.skipif(not (BENCH / "_harness.py").exists(), reason="needs a toklip checkout (benchmarks/)"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="--smoke is the CPU path; run_gpu.sh runs them for real"),
]


@pytest.mark.parametrize(
    "script,args,expected",
    [
        ("bench_attention.py", ["--modes", "fwd+bwd"], {"eager", "sdpa-mask", "triton"}),
        ("bench_lookup_mlp.py", ["--modes", "fwd+bwd,infer", "--providers", "eager,triton-auto"],
         {"eager", "triton-auto", "table-gather", "copy"}),
        ("bench_encode.py", ["--variants", "official,toklip-triton"], {"official", "toklip-triton"}),
    ],
)
def test_smoke_run_writes_results(script, args, expected, tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    name = script.removesuffix(".py")
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["git_sha"]
    rows = data["rows"]
    assert {r["provider"] for r in rows} == expected
    failed = [(r["provider"], r["mode"], r["error"]) for r in rows if not r["ok"]]
    assert not failed, failed
    assert all(r["ms"] and r["ms"] > 0 for r in rows)
    assert (tmp_path / f"{name}.csv").read_text().count("\n") == len(rows) + 1
    assert "goal" in proc.stdout
