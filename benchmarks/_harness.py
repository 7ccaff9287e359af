"""Shared benchmark harness: timing with CUDA events, correctness gates, versions, result files, ratio tables.

Rules every benchmark follows: check a provider's result against a reference before timing it (a wrong
kernel is reported, never ranked); time the median of many runs after warm-up with CUDA events; write
``benchmarks/results/<device>/<name>.json`` and ``.csv`` with torch/triton/driver versions and the git sha;
print ratios measured in the same run. Off-GPU (``--smoke``) the same code runs on CPU with wall-clock
timing, so the scripts themselves are tested in CI.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


@dataclass
class Row:
    """One measurement: a provider running one mode at one shape."""

    bench: str
    provider: str
    mode: str
    shape: dict[str, Any]
    ms: float | None = None  # median
    ms_p20: float | None = None
    ms_p80: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    ok: bool = True  # passed the correctness check
    error: str | None = None  # why it did not run / failed the check
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.mode, *sorted(self.shape.items()))


def add_run_args(ap: argparse.ArgumentParser, *, reps: int = 50, warmup: int = 10, dtype: bool = True) -> None:
    """The options every GPU benchmark takes: dtype, repetitions, the CPU smoke mode, the results folder."""
    if dtype:
        ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (TRITON_INTERPRET=1) to test the script")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device>)")


@dataclass
class Run:
    device: torch.device
    dtype: torch.dtype
    reps: int
    warmup: int


def run_setup(ap: argparse.ArgumentParser, args: argparse.Namespace, *, smoke_reps: tuple[int, int] = (2, 1)) -> Run:
    """Device, dtype and repetitions: the GPU in bf16/fp16, or the CPU in fp32 with a couple of runs (--smoke)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not args.smoke:
        ap.error("needs a CUDA GPU (use --smoke for a CPU test run)")
    name = getattr(args, "dtype", "bf16")
    dtype = torch.float32 if args.smoke else {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
    reps, warmup = smoke_reps if args.smoke else (args.reps, args.warmup)
    return Run(device, dtype, reps, warmup)


def device_slug() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded with every result file."""
    import importlib.metadata as md

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    for dist in ("triton", "toklip", "toklip-kernels", "flash-attn", "flash-attn-4", "xformers"):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, sm=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            env["driver"] = "unknown"
    else:
        env.update(cpu=platform.processor() or platform.machine(), cpus=os.cpu_count())
    return env


def time_ms(fn: Callable[[], Any], *, warmup: int = 10, reps: int = 50, max_seconds: float = 10.0) -> list[float]:
    """Per-run milliseconds: CUDA events around each call on GPU, wall clock on CPU. Stops early (but after
    at least 5 runs) when `max_seconds` is spent, so slow baselines cannot eat the device budget."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times: list[float] = []
    start_all = time.perf_counter()
    for i in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if i >= 4 and time.perf_counter() - start_all > max_seconds:
            break
    return times


def summarize(row: Row, times: Sequence[float], *, flop: float | None = None, nbytes: float | None = None) -> Row:
    qs = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times)] * 4
    row.ms, row.ms_p20, row.ms_p80 = statistics.median(times), qs[0], qs[3]
    if flop:
        row.tflops = flop / (row.ms * 1e-3) / 1e12
    if nbytes:
        row.gbps = nbytes / (row.ms * 1e-3) / 1e9
    row.extra["runs"] = len(times)
    return row


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.double()
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_guarded(row: Row, body: Callable[[], Row]) -> Row:
    """Run one measurement; an exception (missing package, OOM, unsupported shape) becomes row.error."""
    try:
        return body()
    except Exception as e:  # noqa: BLE001 - one provider failing must not stop the benchmark
        row.ok, row.error = False, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return row
    finally:
        free_memory()


def write_results(name: str, rows: Iterable[Row], *, meta: dict[str, Any], out_dir: Path | None = None) -> Path:
    """results/<device>/<name>.json (environment + rows + goals) and .csv (one line per row)."""
    rows = list(rows)
    out = out_dir or RESULTS / device_slug()
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "environment": environment(), **meta, "rows": [asdict(r) for r in rows]}
    json_path = out / f"{name}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    tmp.replace(json_path)
    shape_keys = sorted({k for r in rows for k in r.shape})
    csv_path = out / f"{name}.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["provider", "mode", *shape_keys, "ms", "ms_p20", "ms_p80", "tflops", "gbps", "ok", "error"])
        for r in rows:
            w.writerow([r.provider, r.mode, *(r.shape.get(k) for k in shape_keys), _fmt(r.ms), _fmt(r.ms_p20),
                        _fmt(r.ms_p80), _fmt(r.tflops), _fmt(r.gbps), r.ok, r.error or ""])
    tmp.replace(csv_path)
    return json_path


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def best(rows: Iterable[Row], providers: Sequence[str], key: tuple) -> Row | None:
    """The fastest correct row among `providers` at `key` (mode + shape)."""
    cands = [r for r in rows if r.provider in providers and r.key() == key and r.ok and r.ms is not None]
    return min(cands, key=lambda r: r.ms) if cands else None


def print_ratio_table(rows: Sequence[Row], subject: str, *, shape_cols: Sequence[str], file=sys.stdout) -> None:
    """One line per (mode, shape): every provider's ms and the speed-up of `subject` over it (x > 1 = faster)."""
    providers = list(dict.fromkeys(r.provider for r in rows))
    keys = list(dict.fromkeys(r.key() for r in rows))
    head = ["mode", *shape_cols] + [f"{p} ms" for p in providers] + [f"{subject} vs {p}" for p in providers
                                                                   if p != subject]
    lines = [head]
    for key in keys:
        by = {r.provider: r for r in rows if r.key() == key}
        shape = dict(key[1:])
        cells = [key[0], *(str(shape.get(c, "")) for c in shape_cols)]
        for p in providers:
            r = by.get(p)
            cells.append("-" if r is None or r.ms is None else (f"{r.ms:.3f}" if r.ok else f"({r.ms:.3f} WRONG)"))
        mine = by.get(subject)
        for p in providers:
            if p == subject:
                continue
            r = by.get(p)
            ok = mine is not None and r is not None and mine.ok and r.ok and mine.ms and r.ms
            cells.append(f"{r.ms / mine.ms:.2f}x" if ok else "-")  # type: ignore[union-attr, operator]
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(c).rjust(w) for c, w in zip(line, widths)), file=file)


def goal(name: str, measured: float | None, target: float, *, unit: str = "x") -> dict[str, Any]:
    met = measured is not None and measured >= target
    shown = "not measured" if measured is None else f"{measured:.2f}{unit}"
    print(f"  goal {name}: {shown} (target >= {target}{unit}) {'MET' if met else 'NOT MET'}")
    return {"goal": name, "target": target, "measured": measured, "met": met}
