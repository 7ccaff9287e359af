"""Start-up costs users feel: `import toklip`, `toklip list`, `toklip.build("toklip-test")`.

Goals (CPU machine): import < 0.5 s, list < 1.5 s. Each figure is the median of fresh-process runs, with the
bare interpreter start-up measured in the same run and reported beside it.

    python benchmarks/bench_build.py [--repeats 7] [--out benchmarks/results/cpu/bench_build.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

GOALS = {"import_toklip_s": 0.5, "toklip_list_s": 1.5}


def wall(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def build_in_process(repeats: int) -> dict[str, float]:
    code = (
        "import time; t0=time.perf_counter(); import toklip, torch; t1=time.perf_counter(); "
        "toklip.build('toklip-test'); t2=time.perf_counter(); toklip.build('toklip-test'); t3=time.perf_counter(); "
        "print(t1-t0, t2-t1, t3-t2)"
    )
    first, warm, imports = [], [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        a, b, c = (float(x) for x in out.split())
        imports.append(a)
        first.append(b)
        warm.append(c)
    return {
        "import_toklip_torch_s": statistics.median(imports),
        "build_toklip_test_first_s": statistics.median(first),
        "build_toklip_test_warm_s": statistics.median(warm),
    }


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": str(__import__("os").cpu_count())}
    for dist in ("toklip", "torch", "open_clip_torch", "timm", "pluggy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        out["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_sha"] = "unknown"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/cpu/bench_build.json")
    args = ap.parse_args()
    toklip_cli = [sys.executable, "-m", "toklip"]
    python_s = statistics.median(wall([sys.executable, "-c", "pass"], args.repeats))
    results = {
        "python_startup_s": python_s,
        "import_toklip_s": statistics.median(wall([sys.executable, "-c", "import toklip"], args.repeats)),
        "toklip_list_s": statistics.median(wall([*toklip_cli, "list"], args.repeats)),
        "toklip_plugins_s": statistics.median(wall([*toklip_cli, "plugins"], args.repeats)),
        **build_in_process(max(3, args.repeats // 2)),
    }
    report = {
        "benchmark": "bench_build",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "versions": versions(),
        "results": results,
        "goals": {k: {"goal_s": v, "measured_s": results[k], "met": results[k] < v} for k, v in GOALS.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(k) for k in results)
    for k, v in results.items():
        goal = f"   (goal < {GOALS[k]} s: {'met' if v < GOALS[k] else 'MISSED'})" if k in GOALS else ""
        print(f"{k:<{width}}  {v:7.3f} s{goal}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
