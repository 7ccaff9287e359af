"""Load test for `toklip serve`: N concurrent clients x M requests each, over loopback only.

Reports throughput, latency percentiles (overall and per endpoint), errors by status, the server's batch-size
histogram (from /metrics), and the server's resident memory over the run (peak from the kernel's VmHWM).
Goal (CPU machine, toklip-test): 32 clients x 500 requests, 0 errors, memory that stops growing.

    python benchmarks/bench_serve.py [--clients 32] [--requests 500] [--endpoint mix] [--max-seconds 1800]
        [--model toklip-test] [--server-args "--max-batch 32 --max-wait-ms 5"]
        [--out benchmarks/results/cpu/bench_serve.json]

The server runs as a child process on a free 127.0.0.1 port and is always stopped at the end. Client and
server share the machine's cores, so numbers on a 2-core box are a floor, not the server's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENDPOINTS = ("tokenize", "embed_image", "embed_text", "similarity", "decode")


def _images(n: int) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    out = []
    for seed in range(n):
        arr = np.random.default_rng(seed).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _request(endpoint: str, k: int, images: list[bytes], grid_n: int) -> dict[str, Any]:
    """The k-th request body for an endpoint (one item per request, as a web client would send)."""
    image = images[k % len(images)]
    if endpoint == "tokenize":
        return {"url": "/v1/tokenize", "files": [("image", ("x.png", image, "image/png"))]}
    if endpoint == "embed_image":
        return {"url": "/v1/embed/image", "json": {"images": [base64.b64encode(image).decode()]}}
    if endpoint == "embed_text":
        return {"url": "/v1/embed/text", "json": {"texts": [f"a photo of thing number {k}"]}}
    if endpoint == "similarity":
        return {"url": "/v1/similarity", "files": [("image", ("x.png", image, "image/png"))],
                "data": {"texts": ["a cat", "a dog", "a diagram"]}}
    if endpoint == "decode":
        return {"url": "/v1/decode", "json": {"indices": [[(k * 7 + i) % 1024 for i in range(grid_n)]]}}
    raise ValueError(endpoint)


def _rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _latency_summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _pct(values, 50) * 1e3, "p90_ms": _pct(values, 90) * 1e3, "p99_ms": _pct(values, 99) * 1e3,
            "max_ms": max(values) * 1e3 if values else float("nan"),
            "mean_ms": statistics.fmean(values) * 1e3 if values else float("nan")}


def _batch_histogram(metrics_text: str) -> dict[str, Any]:
    """toklip_batch_size histogram -> per op: model calls, items, mean batch, count per bucket (not cumulative)."""
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("toklip_batch_size_bucket{"):
            labels, value = line[len("toklip_batch_size_bucket{"):].split("} ")
            parts = dict(p.split("=") for p in labels.split(","))
            le = parts["le"].strip('"')
            buckets[parts["op"].strip('"')].append((float("inf") if le == "+Inf" else float(le), float(value)))
        elif line.startswith("toklip_batch_size_sum{"):
            op = line.split('op="')[1].split('"')[0]
            sums[op] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("toklip_batch_size_count{"):
            op = line.split('op="')[1].split('"')[0]
            counts[op] = float(line.rsplit(" ", 1)[1])
    out = {}
    for op, rows in buckets.items():
        rows.sort()
        per_bucket, previous = {}, 0.0
        for le, cumulative in rows:
            label = "+Inf" if le == float("inf") else f"<={int(le)}"
            per_bucket[label] = int(cumulative - previous)
            previous = cumulative
        calls = counts.get(op, 0.0)
        out[op] = {"model_calls": int(calls), "items": int(sums.get(op, 0.0)),
                   "mean_batch": sums.get(op, 0.0) / calls if calls else 0.0, "histogram": per_bucket}
    return out


async def _run_load(url: str, args: argparse.Namespace, pid: int | None, grid_n: int) -> dict[str, Any]:
    import httpx

    images = _images(8)
    endpoints = ENDPOINTS if args.endpoint == "mix" else (args.endpoint,)
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    rss_samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + args.max_seconds
    done = 0
    stop_sampling = asyncio.Event()

    async def sample_rss(t0: float) -> None:
        while not stop_sampling.is_set() and pid is not None:
            rss = _rss_kib(pid)
            if rss is not None:
                rss_samples.append((time.monotonic() - t0, rss))
            try:
                await asyncio.wait_for(stop_sampling.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one_client(c: int) -> None:
            nonlocal done
            for i in range(args.requests):
                if time.monotonic() > deadline:
                    return
                endpoint = endpoints[(c + i) % len(endpoints)]
                spec = _request(endpoint, c * args.requests + i, images, grid_n)
                t = time.perf_counter()
                try:
                    r = await client.post(spec.pop("url"), **spec)
                    status = str(r.status_code)
                    if r.status_code != 200 and len(errors) < 20:
                        errors.append(f"{endpoint}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    status = type(e).__name__
                    if len(errors) < 20:
                        errors.append(f"{endpoint}: {status}: {e}")
                latencies[endpoint].append(time.perf_counter() - t)
                statuses[status] += 1
                done += 1

        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_rss(t0))
        wall0 = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(args.clients)))
        wall = time.perf_counter() - wall0
        stop_sampling.set()
        await sampler
        metrics_text = (await client.get("/metrics")).text

    everything = [x for values in latencies.values() for x in values]
    ok = statuses.get("200", 0)
    rss_mib = [kib / 1024 for _, kib in rss_samples]
    tenth = max(1, len(rss_mib) // 10)
    return {
        "requests_sent": done,
        "requests_planned": args.clients * args.requests,
        "stopped_by_time_limit": done < args.clients * args.requests,
        "wall_s": wall,
        "throughput_rps": done / wall if wall else 0.0,
        "ok": ok,
        "errors": done - ok,
        "status_counts": dict(statuses),
        "error_samples": errors,
        "latency": _latency_summary(everything),
        "latency_by_endpoint": {k: {"n": len(v), **_latency_summary(v)} for k, v in latencies.items()},
        "batches": _batch_histogram(metrics_text),
        "server_memory_mib": {
            "samples": len(rss_mib),
            "first_10pct_mean": statistics.fmean(rss_mib[:tenth]) if rss_mib else None,
            "last_10pct_mean": statistics.fmean(rss_mib[-tenth:]) if rss_mib else None,
            "max_sampled": max(rss_mib) if rss_mib else None,
            "by_tenth_of_run": [round(statistics.fmean(rss_mib[i * len(rss_mib) // 10:(i + 1) * len(rss_mib) // 10]), 1)
                                for i in range(10)] if len(rss_mib) >= 10 else [],
            "peak_vmhwm": (_rss_kib(pid, "VmHWM") or 0) / 1024 if pid else None,
        },
    }


def _machine() -> dict[str, Any]:
    import importlib.metadata as md

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
                             "cpus": os.cpu_count()}
    for dist in ("toklip", "torch", "fastapi", "uvicorn", "starlette", "httpx"):
        try:
            facts[dist] = md.version(dist)
        except md.PackageNotFoundError:
            facts[dist] = "not installed"
    try:
        facts["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                          check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        facts["git_sha"] = "unknown"
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=500, help="per client")
    ap.add_argument("--endpoint", default="mix", choices=("mix", *ENDPOINTS))
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="stop sending after this long")
    ap.add_argument("--model", default="toklip-test")
    ap.add_argument("--server-args", default="--max-batch 32 --max-wait-ms 5",
                    help="extra `toklip serve` options (quoted)")
    ap.add_argument("--url", default=None, help="load an already running server (loopback only) instead")
    ap.add_argument("--out", default="benchmarks/results/cpu/bench_serve.json")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1:
        ap.error("--clients and --requests must be at least 1")

    from toklip.serve.process import ServerProcess

    server = None
    url, pid = args.url, None
    if url is not None and not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        ap.error("--url must be a loopback address: this benchmark never loads other machines")
    server_args = ["--model", args.model, "--no-access-log", "--log-level", "warning", *shlex.split(args.server_args)]
    try:
        if url is None:
            t0 = time.perf_counter()
            server = ServerProcess(server_args).start()
            url, pid = server.url, server.pid
            print(f"server ready at {url} in {time.perf_counter() - t0:.1f} s (pid {pid})", flush=True)
        import httpx

        grid = httpx.get(f"{url}/v1/info", timeout=30).json()["grid"]
        rss_start = (_rss_kib(pid) or 0) / 1024 if pid else None
        print(f"load: {args.clients} clients x {args.requests} requests ({args.endpoint})", flush=True)
        result = asyncio.run(_run_load(url, args, pid, grid[0] * grid[1]))
        result["server_memory_mib"]["after_warm_up"] = rss_start
    finally:
        if server is not None:
            server.stop()

    report = {
        "benchmark": "bench_serve",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "config": {"clients": args.clients, "requests_per_client": args.requests, "endpoint": args.endpoint,
                   "model": args.model, "server_args": server_args, "max_seconds": args.max_seconds},
        "goal": "32 clients x 500 requests, 0 errors, bounded server memory (CPU, toklip-test)",
        "results": result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    r = result
    print(f"{r['requests_sent']} requests in {r['wall_s']:.1f} s = {r['throughput_rps']:.1f} req/s; "
          f"errors {r['errors']}; p50 {r['latency']['p50_ms']:.0f} ms, p99 {r['latency']['p99_ms']:.0f} ms")
    for op, b in r["batches"].items():
        print(f"  batches {op}: {b['model_calls']} calls, mean {b['mean_batch']:.1f} items, {b['histogram']}")
    m = r["server_memory_mib"]
    print(f"  server RSS MiB: after warm-up {m['after_warm_up']:.0f}, by tenth of the run {m['by_tenth_of_run']}, "
          f"peak {m['peak_vmhwm']:.0f}")
    print(f"wrote {out}")
    if r["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
