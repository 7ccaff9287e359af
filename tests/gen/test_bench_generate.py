"""The sampling benchmark runs end to end on the CPU (tiny config, one repetition) and writes its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_generate_smoke(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_generate

    try:
        assert bench_generate.main(["--configs", "tiny", "--batch", "2", "--reps", "1", "--warmup", "0",
                                    "--out", str(tmp_path)]) == 0
    finally:
        sys.modules.pop("bench_generate", None)
    result = json.loads((tmp_path / "bench_generate.json").read_text())
    rows = {(r["provider"], r["mode"]): r for r in result["rows"]}
    for mode in ("cfg-off", "cfg-on"):
        row = rows[("toklip", mode)]
        assert row["ok"] and row["ms"] > 0 and row["extra"]["tokens_per_s"] > 0, row
        for provider in ("fused-step", "fused-reencode"):
            assert rows[(provider, mode)]["ok"] and rows[(provider, mode)]["ms"] > 0, rows[(provider, mode)]
    assert rows[("toklip-stream", "-")]["ok"]
    assert {r["mode"] for r in result["ratios"]} == {"cfg-off", "cfg-on"}
