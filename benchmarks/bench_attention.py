"""Attention microbenchmark: toklip's Triton flash attention vs every other implementation we can import.

Providers: eager PyTorch, SDPA with each backend forced (flash, efficient, cuDNN), SDPA with the explicit float
causal mask the official TokLIP code passes, FlexAttention (compiled), flash-attn and xformers when importable,
toklip ``triton`` (default launch configs) and ``triton-tuned`` (TOKLIP_TRITON_AUTOTUNE=1).
Modes: fwd, bwd, fwd+bwd. Shapes: B in {32, 128, 256}, N in {256, 576, 577}, H = 16, d in {64, 72, 128},
causal and bidirectional; q, k, v are the [B, N, 3, H, d] views a fused qkv projection gives (``--layout``).
FLOPs follow FlashAttention's convention: fwd 4*B*H*N^2*d (halved when causal), bwd 2.5x fwd.

    python benchmarks/bench_attention.py                       # full grid on the GPU, bf16
    python benchmarks/bench_attention.py --shapes goal         # just the goal shapes
    TRITON_INTERPRET=1 python benchmarks/bench_attention.py --smoke --out /tmp/b   # CPU: tests the script

Goals (H100, same run): fwd+bwd at B=128, N=576, H=16, d=72, causal >= 1.3x the best SDPA backend and
>= 1.5x FlexAttention; forward >= 250 TFLOP/s (causal-counted).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

SDPA = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn")
GOAL_SHAPE = {"B": 128, "N": 576, "H": 16, "d": 72, "causal": True}
Attn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _eager(causal: bool) -> Attn:
    masks: dict[tuple, torch.Tensor] = {}

    def fn(q, k, v):
        s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if causal:
            key = (s.shape[-2], s.device)
            if key not in masks:
                masks[key] = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool, device=s.device).triu(1)
            s = s.masked_fill(masks[key], float("-inf"))
        return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v

    return fn


def _sdpa(backend_name: str, causal: bool) -> Attn:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
               "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]

    def fn(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return fn


def _sdpa_official_mask(causal: bool) -> Attn:
    """What the official TokLIP code does: a float triu(-inf) mask built on every call (rules out flash)."""

    def fn(q, k, v):
        n = q.shape[-2]
        mask = torch.full((n, n), float("-inf"), device=q.device, dtype=q.dtype).triu(1) if causal else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return fn


def _flex(causal: bool, n: int, device: torch.device) -> Attn:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = None
    if causal:
        block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, B=None, H=None, Q_LEN=n, KV_LEN=n,
                                       device=device)

    def fn(q, k, v):
        return compiled(q, k, v, block_mask=block_mask)

    return fn


def _flash_attn(causal: bool) -> Attn:
    from flash_attn import flash_attn_func

    def fn(q, k, v):
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal).transpose(1, 2)

    return fn


def _xformers(causal: bool) -> Attn:
    import xformers.ops as xops

    bias = xops.LowerTriangularMask() if causal else None

    def fn(q, k, v):
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)

    return fn


def _triton(causal: bool, tuned: bool) -> Attn:
    from toklip_kernels.attention import flash_attention

    def fn(q, k, v):
        prev = os.environ.get("TOKLIP_TRITON_AUTOTUNE")
        os.environ["TOKLIP_TRITON_AUTOTUNE"] = "1" if tuned else "0"
        try:
            return flash_attention(q, k, v, causal=causal)
        finally:
            if prev is None:
                os.environ.pop("TOKLIP_TRITON_AUTOTUNE", None)
            else:
                os.environ["TOKLIP_TRITON_AUTOTUNE"] = prev

    return fn


def make_provider(name: str, causal: bool, n: int, device: torch.device) -> Attn:
    if name == "eager":
        return _eager(causal)
    if name in SDPA:
        return _sdpa(name, causal)
    if name == "sdpa-mask":
        return _sdpa_official_mask(causal)
    if name == "flex":
        return _flex(causal, n, device)
    if name == "flash_attn":
        return _flash_attn(causal)
    if name == "xformers":
        return _xformers(causal)
    if name in ("triton", "triton-tuned"):
        return _triton(causal, tuned=name == "triton-tuned")
    raise ValueError(f"unknown provider {name!r}")


def make_inputs(b: int, n: int, h: int, d: int, dtype: torch.dtype, device: torch.device, layout: str):
    """(leaf, q, k, v): q, k, v [B, H, N, d] as views of one leaf tensor (packed) or three contiguous leaves."""
    if layout == "packed":
        qkv = torch.randn(b, n, 3, h, d, device=device, dtype=dtype, requires_grad=True)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return [qkv], q, k, v
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    return [q, k, v], q, k, v


def check(fn: Attn, shape: dict, dtype: torch.dtype, device: torch.device, layout: str) -> tuple[bool, str | None]:
    """The provider's output and gradients on a 2-image slice vs a float32 reference (and vs eager's error)."""
    from toklip_kernels.attention import attention_reference

    leaves, q, k, v = make_inputs(2, shape["N"], shape["H"], shape["d"], dtype, device, layout)
    out = fn(q, k, v)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    rq, rk, rv = _views(ref_leaves, layout)
    ref = attention_reference(rq, rk, rv, causal=shape["causal"])
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.float())
    eager_out = _eager(shape["causal"])(q.detach(), k.detach(), v.detach())
    bound = 3 * H.max_abs_err(eager_out, ref) + 1e-3
    err = H.max_abs_err(out, ref)
    if not torch.isfinite(out).all() or err > bound:
        return False, f"output error {err:.3g} > {bound:.3g}"
    for g, rg in zip(grads, ref_grads):
        rel = H.rel_err(g, rg)
        if not torch.isfinite(g).all() or rel > 2e-2:
            return False, f"gradient relative error {rel:.3g}"
    return True, None


def _views(leaves, layout):
    if layout == "packed":
        return leaves[0].permute(2, 0, 3, 1, 4).unbind(0)
    return leaves


def flop(shape: dict, mode: str) -> float:
    f = 4.0 * shape["B"] * shape["H"] * shape["N"] ** 2 * shape["d"] / (2 if shape["causal"] else 1)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]


def measure(name: str, shape: dict, mode: str, dtype, device, layout: str, reps: int, warmup: int) -> H.Row:
    row = H.Row("attention", name, mode, dict(shape, dtype=str(dtype).replace("torch.", ""), layout=layout))

    def body() -> H.Row:
        fn = make_provider(name, shape["causal"], shape["N"], device)
        ok, why = check(fn, shape, dtype, device, layout)
        row.ok, row.error = ok, why
        leaves, q, k, v = make_inputs(shape["B"], shape["N"], shape["H"], shape["d"], dtype, device, layout)
        if mode == "fwd":
            with torch.no_grad():
                times = H.time_ms(lambda: fn(q, k, v), reps=reps, warmup=warmup)
        else:
            out = fn(q, k, v)
            dout = torch.randn_like(out)
            if mode == "bwd":
                times = H.time_ms(lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True), reps=reps,
                                  warmup=warmup)
            else:
                times = H.time_ms(lambda: torch.autograd.grad(fn(*_views(leaves, layout)), leaves, dout), reps=reps,
                                  warmup=warmup)
        return H.summarize(row, times, flop=flop(shape, mode))

    return H.run_guarded(row, body)


def shapes(which: str) -> list[dict]:
    if which == "smoke":
        return [{"B": 1, "N": 33, "H": 2, "d": 72, "causal": c} for c in (True, False)]
    if which == "goal":
        return [dict(GOAL_SHAPE), {"B": 256, "N": 577, "H": 16, "d": 72, "causal": True},
                {"B": 128, "N": 576, "H": 16, "d": 72, "causal": False}]
    return [{"B": b, "N": n, "H": 16, "d": d, "causal": c}
            for d in (72, 64, 128) for n in (576, 577, 256) for b in (128, 32, 256) for c in (True, False)]


def providers(requested: str | None, smoke: bool) -> list[str]:
    if requested:
        return requested.split(",")
    if smoke:
        return ["eager", "sdpa-mask", "triton"]
    names = ["eager", *SDPA, "sdpa-mask", "flex", "triton", "triton-tuned"]
    for pkg, name in (("flash_attn", "flash_attn"), ("xformers", "xformers")):
        try:
            __import__(pkg)
            names.insert(-2, name)
        except Exception:  # noqa: BLE001 - not installed or broken: simply not a provider
            pass
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", choices=["full", "goal"], default="full")
    ap.add_argument("--providers", help="comma-separated subset")
    ap.add_argument("--modes", default="fwd,bwd,fwd+bwd")
    ap.add_argument("--layout", choices=["packed", "contiguous"], default="packed")
    H.add_run_args(ap)
    args = ap.parse_args(argv)
    run = H.run_setup(ap, args)
    device, dtype, reps, warmup = run.device, run.dtype, run.reps, run.warmup
    names = providers(args.providers, args.smoke)
    rows: list[H.Row] = []
    for shape in shapes("smoke" if args.smoke else args.shapes):
        for mode in args.modes.split(","):
            for name in names:
                row = measure(name, shape, mode, dtype, device, args.layout, reps, warmup)
                rows.append(row)
                status = f"{row.ms:.3f} ms {row.tflops or 0:.1f} TFLOP/s" if row.ms is not None else "-"
                print(f"{mode:8s} {shape} {name:14s} {status} {'' if row.ok else 'FAILED: ' + str(row.error)}",
                      flush=True)
    print()
    H.print_ratio_table(rows, "triton", shape_cols=["B", "N", "H", "d", "causal"])
    goals = report_goals(rows, dtype, args.layout)
    path = H.write_results("bench_attention", rows, meta={"goals": goals, "args": vars(args) | {"out": str(args.out)}},
                           out_dir=args.out)
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


def report_goals(rows: list[H.Row], dtype, layout: str) -> list[dict]:
    shape = dict(GOAL_SHAPE, dtype=str(dtype).replace("torch.", ""), layout=layout)
    key_fb = ("fwd+bwd", *sorted(shape.items()))
    key_f = ("fwd", *sorted(shape.items()))
    mine = H.best(rows, ["triton", "triton-tuned"], key_fb)
    sdpa = H.best(rows, SDPA, key_fb)
    flex = H.best(rows, ["flex"], key_fb)
    fwd = H.best(rows, ["triton", "triton-tuned"], key_f)
    print(f"\ngoals at {GOAL_SHAPE} ({shape['dtype']}, {layout}):")
    return [
        H.goal(f"fwd+bwd vs best SDPA ({sdpa.provider if sdpa else 'none'})",
               sdpa.ms / mine.ms if mine and sdpa else None, 1.3),
        H.goal("fwd+bwd vs FlexAttention", flex.ms / mine.ms if mine and flex else None, 1.5),
        H.goal("forward TFLOP/s (causal-counted)", fwd.tflops if fwd else None, 250, unit=" TFLOP/s"),
    ]


if __name__ == "__main__":
    sys.exit(main())
