"""One full TokLIP training step: samples/s and peak memory, toklip's fast paths vs the baseline, same run.

The step is the real one: ``Trainer._train_step`` of ``toklip.train`` (student forward and backward through
TokLIP with the frozen VQ and text tower, the frozen teacher's forward, ``TokLIPLoss`` = CLIP InfoNCE +
1000 x MSE distillation, the AdamW step of ``build_optimizer``, the logit-scale clamp), on a fixed random batch
(images in [-1, 1] and random caption token ids).

Configs:
- ``tiny``: ``toklip-test`` (fp32). Runs anywhere; on a CPU it is what gets measured.
- ``full``: ``toklip-s-256`` (LlamaGen VQ + SigLIP2 So400m/16 at 256 px, random weights) under bf16 autocast.
  CUDA only; without a GPU it is skipped with a note in the results.

Variants (same initial weights, same teacher, same batch):
- ``baseline``: the official-style path: SDPA attention, toklip's eager ``mlp`` projector.
- ``grad-ckpt``: ``baseline`` with gradient checkpointing of the token encoder (memory for time).
- ``kernels``: Triton attention (``attn_backend="triton"``) and the fused ``mlp-fused`` projector from the
  toklip-kernels package (``kernels/``). CUDA only (on a CPU under ``TRITON_INTERPRET=1``, as a smoke test).
Default: ``baseline`` + ``grad-ckpt`` on a CPU, ``baseline`` + ``kernels`` on a GPU.

Correctness gate (before timing): the first step's loss of every variant must match ``baseline``'s (relative
difference <= 1e-4 in fp32, <= 3e-2 under bf16); a variant that does not is reported, never ranked.
Timing: warm-up steps, then the median of the timed steps (CUDA events on a GPU, wall clock on a CPU). On a
CPU the variants run in interleaved rounds (A B A B) and each keeps its fastest round.
Memory: ``torch.cuda.max_memory_allocated`` over warm-up + timed steps on a GPU (weights, gradients, AdamW
state and activations). On a CPU: the peak RSS during the steps (the kernel's VmHWM mark, reset after the
build, with freed memory trimmed first), and ``step_mem_mib``, what the steps add to the RSS after the build
(activations, gradients, AdamW state): the CPU memory ratios use that.

    python benchmarks/bench_train.py                       # CPU: tiny; GPU: full
    python benchmarks/bench_train.py --configs tiny,full --batch 32,64 --variants baseline,kernels,grad-ckpt

Writes ``benchmarks/results/<device>/bench_train.json`` (device, versions, date, git commit, rows, ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

CONFIGS = {
    "tiny": {"preset": "toklip-test", "precision": "fp32", "batch": 16, "warmup": 2, "reps": 10},
    "full": {"preset": "toklip-s-256", "precision": "bf16", "batch": 64, "warmup": 3, "reps": 10},
}
VARIANTS = {
    "baseline": {"attn_backend": "sdpa", "projector": "mlp", "grad_checkpointing": False},
    "grad-ckpt": {"attn_backend": "sdpa", "projector": "mlp", "grad_checkpointing": True},
    "kernels": {"attn_backend": "triton", "projector": "mlp-fused", "grad_checkpointing": False},
}
CUDA_ONLY = {"kernels"}


class _Stub:
    """The data source the Trainer would open; the benchmark feeds its own batch."""

    num_samples = None

    def describe(self) -> str:
        return "benchmark batch"


def _projector(name: str, preset: str) -> Any:
    return {"name": name, "hidden": 256} if preset == "toklip-test" else name  # toklip-test's projector size


def build_trainer(config: str, variant: str, device: torch.device, state: dict[str, torch.Tensor] | None):
    """(Trainer set up for one variant, its model). Weights come from ``state`` when given."""
    import toklip
    from toklip.train.config import TrainConfig
    from toklip.train.trainer import Trainer

    c, v = CONFIGS[config], VARIANTS[variant]
    torch.manual_seed(0)
    with torch.device(device):
        model = toklip.build(c["preset"], attn_backend=v["attn_backend"], projector=_projector(v["projector"],
                                                                                                c["preset"]))
    if state is not None:
        model.load_state_dict(state)
    cfg = TrainConfig.from_dict({
        "model": {"grad_checkpointing": v["grad_checkpointing"]},
        "data": {"batch_size": 1, "workers": 0},
        "optim": {"lr": 1e-5, "warmup": 10},
        "train": {"steps": 10_000, "precision": c["precision"], "device": device.type, "progress": False,
                  "out_dir": tempfile.gettempdir()},
    })
    trainer = Trainer(cfg, model=model, source=_Stub(), echo=lambda s: None)
    trainer._setup()  # seeds (so every variant gets the same random teacher), teacher, loss, optimizer
    return trainer, model


def make_batch(model: Any, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, model.image_size, model.image_size, generator=g) * 2 - 1
    # random token ids: SigLIP2's own tokenizer lives on the HF hub, and a GPU box may be offline
    ids = torch.randint(1, model.vocab_size, (batch, model.context_length), generator=g)
    return {"images": images.to(device), "text_ids": ids.to(device)}


def rss_mib(field: str = "VmRSS") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(config: str, variant: str, batch: int, device: torch.device, warmup: int, reps: int,
            state: dict[str, torch.Tensor] | None, max_seconds: float) -> dict[str, Any]:
    """Everything one row needs: first-step losses (the gate), step times, memory."""
    cuda = device.type == "cuda"
    H.free_memory()
    _malloc_trim()  # hand memory freed by the previous variant back to the OS, so RSS starts clean
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer, model = build_trainer(config, variant, device, state)
    data = make_batch(model, batch, device)
    gc.collect()
    hwm_reset = reset_peak_rss()
    rss_built = rss_mib()
    step = [0]

    def one_step() -> dict[str, torch.Tensor]:
        trainer.schedule.apply(step[0])
        losses = trainer._train_step(data)
        step[0] += 1
        return losses

    first = one_step()  # before any update: comparable across variants
    losses = {k: float(v.detach().float()) for k, v in first.items()}
    times = H.time_ms(one_step, warmup=max(0, warmup - 1), reps=reps, max_seconds=max_seconds)
    out: dict[str, Any] = {
        "losses": losses, "loss": sum(losses.values()), "times": times,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
        "teacher_params": sum(p.numel() for p in trainer.task.teacher.parameters()) if trainer.task.teacher else 0,
        "image_size": model.image_size,
    }
    if cuda:
        torch.cuda.synchronize()
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        hwm = rss_mib("VmHWM") if hwm_reset else None
        out["peak_mem_mib"] = hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        out["mem_kind"] = ("peak RSS during the steps (VmHWM reset after the build)" if hwm else
                           "peak RSS of the process so far")
        out["rss_after_build_mib"] = rss_built
        if hwm and rss_built is not None:  # what the steps add to libraries + weights: activations, grads, AdamW
            out["step_mem_mib"] = out["peak_mem_mib"] - rss_built
    del trainer, model, data
    gc.collect()
    return out


def initial_state(config: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The baseline's freshly built weights (on the CPU), loaded into every variant (projector keys are shared)."""
    import toklip

    torch.manual_seed(0)
    with torch.device(device):
        model = toklip.build(CONFIGS[config]["preset"], projector=_projector("mlp", CONFIGS[config]["preset"]))
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    del model
    H.free_memory()
    return state


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="auto", help="tiny,full (auto: tiny on a CPU, full on a GPU)")
    ap.add_argument("--variants", default="auto",
                    help=f"{','.join(VARIANTS)} (auto: baseline,grad-ckpt on a CPU, baseline,kernels on a GPU)")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default per config: "
                    + ", ".join(f"{k} {v['batch']}" for k, v in CONFIGS.items()) + ")")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default per config)")
    ap.add_argument("--reps", type=int, default=None, help="timed steps (default per config)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per variant (default: 5 on a CPU, "
                    "1 on a GPU); the fastest round counts")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="stop timing a variant after this (>= 5 steps)")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device>)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: 1 on a CPU run, torch's default with a GPU)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # auto on a CPU lists full too, so the results say it was skipped
    configs = (["full"] if cuda else ["tiny", "full"]) if args.configs == "auto" else args.configs.split(",")
    variants = (["baseline", "kernels"] if cuda else ["baseline", "grad-ckpt"]) if args.variants == "auto" \
        else args.variants.split(",")
    for name in configs:
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for name in variants:
        if name not in VARIANTS:
            ap.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if "baseline" not in variants:
        variants.insert(0, "baseline")
    variants = ["baseline"] + [v for v in variants if v != "baseline"]
    notes: list[str] = []
    rows: list[H.Row] = []
    ratios: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    load_start = _loadavg()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if args.threads:
            torch.set_num_threads(args.threads)
    else:  # one thread by default: multi-threaded CPU kernels time badly when other processes share the cores
        torch.set_num_threads(args.threads or 1)

    for config in configs:
        c = CONFIGS[config]
        if config == "full" and not cuda:
            notes.append("full (toklip-s-256, bf16) skipped: needs a CUDA GPU")
            print(f"skipping {config}: needs a CUDA GPU", flush=True)
            continue
        batches = [int(b) for b in args.batch.split(",")] if args.batch else [c["batch"]]
        args.warmup_n = c["warmup"] if args.warmup is None else args.warmup
        args.reps_n = c["reps"] if args.reps is None else args.reps
        args.rounds_n = args.rounds or (1 if cuda else 5)
        state = initial_state(config, device)
        for b in batches:
            shape = {"config": config, "preset": c["preset"], "B": b, "precision": c["precision"]}
            todo = []
            for variant in variants:
                row = H.Row("train", variant, "train-step", dict(shape))
                if variant in CUDA_ONLY and not cuda and not os.environ.get("TRITON_INTERPRET"):
                    row.ok, row.error = False, "skipped: needs a CUDA GPU"
                    notes.append(f"{variant} ({config}) skipped: needs a CUDA GPU")
                else:
                    todo.append(row)
                rows.append(row)
            # rounds run the variants interleaved (A B A B); each row keeps its fastest round, so a burst of
            # load from other processes hits one round, not one variant
            runs: dict[str, list[dict[str, Any]]] = {r.provider: [] for r in todo}
            for rnd in range(args.rounds_n):
                for row in todo:
                    if row.error:
                        continue
                    try:
                        res = measure(config, row.provider, b, device, args.warmup_n, args.reps_n, state,
                                      args.max_seconds)
                    except Exception as e:  # noqa: BLE001 - one variant failing must not stop the benchmark
                        first_line = str(e).splitlines()[0][:300] if str(e) else ""
                        row.ok, row.error = False, f"{type(e).__name__}: {first_line}"
                        print(f"{config} B={b} {row.provider:10s} FAILED: {row.error}", flush=True)
                        continue
                    finally:
                        H.free_memory()
                    res["median_ms"] = H.summarize(H.Row("", "", "", {}), res["times"]).ms
                    runs[row.provider].append(res)
                    print(f"{config} B={b} {row.provider:10s} round {rnd + 1}: step {res['median_ms']:8.1f} ms  "
                          f"peak {res['peak_mem_mib']:8.0f} MiB  loss {res['loss']:.5f}", flush=True)
            ref_loss = runs["baseline"][0]["loss"] if runs.get("baseline") else None
            tol = 1e-4 if c["precision"] == "fp32" else 3e-2
            for row in todo:
                if not runs[row.provider] or row.error:  # failed in some round: reported, never ranked
                    continue
                best = dict(min(runs[row.provider], key=lambda r: r["median_ms"]))
                H.summarize(row, best.pop("times"))
                best.pop("median_ms")
                row.extra.update(best)
                row.extra["round_ms"] = [r["median_ms"] for r in runs[row.provider]]
                row.extra["peak_mem_mib"] = max(r["peak_mem_mib"] for r in runs[row.provider])
                if all("step_mem_mib" in r for r in runs[row.provider]):
                    row.extra["step_mem_mib"] = max(r["step_mem_mib"] for r in runs[row.provider])
                row.extra["samples_per_s"] = b / row.ms * 1e3
                if ref_loss is None:
                    row.ok, row.error = False, "no baseline to check the loss against"
                    continue
                rel = abs(row.extra["loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
                row.extra["loss_rel_diff_vs_baseline"] = rel
                row.ok = rel <= tol
                row.error = None if row.ok else f"first-step loss differs from baseline by {rel:.2e} (> {tol})"
            print()
            for row in rows:
                if row.shape != shape:
                    continue
                if row.ms is None:
                    print(f"{config} B={b} {row.provider:10s} FAILED: {row.error}", flush=True)
                    continue
                mem = f"peak {row.extra['peak_mem_mib']:8.0f} MiB"
                if "step_mem_mib" in row.extra:
                    mem += f" (steps add {row.extra['step_mem_mib']:.0f})"
                print(f"{config} B={b} {row.provider:10s} {row.extra['samples_per_s']:9.2f} samples/s  step "
                      f"{row.ms:8.1f} ms (p20 {row.ms_p20:.1f}, p80 {row.ms_p80:.1f}, {row.extra['runs']} runs)  "
                      f"{mem}  loss {row.extra['loss']:.5f}{'' if row.ok else '  WRONG: ' + str(row.error)}",
                      flush=True)
            base = next((r for r in rows if r.provider == "baseline" and r.shape.get("config") == config
                         and r.shape.get("B") == b and r.ok and r.ms), None)
            for r in rows:
                if r.shape.get("config") != config or r.shape.get("B") != b or r.provider == "baseline":
                    continue
                entry = {"config": config, "B": b, "variant": r.provider, "vs": "baseline",
                         "speedup": None, "memory_ratio": None}
                if base is not None and r.ok and r.ms:
                    entry["speedup"] = base.ms / r.ms
                    entry["memory_ratio"] = r.extra["peak_mem_mib"] / base.extra["peak_mem_mib"]
                    line = (f"  {config} B={b}: {r.provider} vs baseline: {entry['speedup']:.2f}x samples/s, "
                            f"{entry['memory_ratio']:.2f}x peak memory")
                    if "step_mem_mib" in r.extra and base.extra.get("step_mem_mib"):
                        entry["step_memory_ratio"] = r.extra["step_mem_mib"] / base.extra["step_mem_mib"]
                        line += f", {entry['step_memory_ratio']:.2f}x memory added by the steps"
                    print(line, flush=True)
                ratios.append(entry)

    load_end = _loadavg()
    busy = max((x[0] for x in (load_start, load_end) if x), default=0.0)
    if not cuda and busy > (os.cpu_count() or 1):
        notes.append(f"other processes were running (1-min load average up to {busy:.1f} on {os.cpu_count()} CPUs): "
                     "CPU step times are noisy; each row keeps its fastest round")
    out_dir = args.out or H.RESULTS / H.device_slug()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = H.environment()
    payload = {
        "benchmark": "bench_train",
        "device": H.device_slug(),
        "date": env["date"],
        "torch": env["torch"],
        "git_commit": env["git_sha"],
        "environment": env,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "configs": {k: CONFIGS[k] for k in configs if cuda or k != "full"},
        "variants": {k: VARIANTS[k] for k in variants},
        "threads": torch.get_num_threads(),
        "load_average": {"start": load_start, "end": load_end},
        "notes": notes,
        "ratios": ratios,
        "rows": [asdict(r) for r in rows],
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    path = out_dir / "bench_train.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    tmp.replace(path)
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
