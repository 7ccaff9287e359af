"""VQ lookup + MLP microbenchmark: indices [B, N] -> MLP(normalize(codebook)[indices]) [B, N, D].

TokLIP size: V = 16384 codes of c = 8, D = 1152, hidden 4608, bf16. Providers: eager PyTorch (TokLIP's own
computation), torch.compile of it, toklip's Triton ``per_token`` and ``codebook`` strategies (``codebook``: the
MLP over the codebook rows with cuBLAS, ``-fused``: with the fused Triton kernels, ``-det``: the deterministic
segment-sum backward) and ``auto`` (what the projector picks). Modes: fwd, bwd, fwd+bwd, and
``infer``: frozen weights without autograd, where toklip gathers from its cached [V, D] table; ``copy`` is a
plain device copy of the output's size, the bandwidth yardstick for that gather.
FLOPs are the per-token computation's (2*T*(c*4D + 4D*D) forward, twice that backward) for every provider, so
TFLOP/s compares time, not work done.

    python benchmarks/bench_lookup_mlp.py
    TRITON_INTERPRET=1 python benchmarks/bench_lookup_mlp.py --smoke --out /tmp/b

Goals (H100, same run): fwd+bwd at B=256, N=576 >= 6x eager and >= 3x torch.compile; frozen-inference gather
>= 70% of the measured device copy bandwidth.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

GOAL = {"B": 256, "N": 576}
# provider -> (strategy, deterministic, table_impl)
TRITON = {"triton-per-token": ("per_token", False, None), "triton-codebook": ("codebook", False, "torch"),
          "triton-codebook-fused": ("codebook", False, "triton"), "triton-codebook-det": ("codebook", True, None),
          "triton-auto": ("auto", False, None)}


def make_params(vocab: int, code_dim: int, width: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(vocab, code_dim, generator=g), dim=-1).to(device)
    hidden = 4 * width
    w1 = (torch.randn(hidden, code_dim, generator=g) / math.sqrt(code_dim)).to(device, dtype).requires_grad_()
    b1 = (torch.randn(hidden, generator=g) * 0.02).to(device, dtype).requires_grad_()
    w2 = (torch.randn(width, hidden, generator=g) / math.sqrt(hidden)).to(device, dtype).requires_grad_()
    b2 = (torch.randn(width, generator=g) * 0.02).to(device, dtype).requires_grad_()
    return table, [w1, b1, w2, b2]


def eager(indices, table, w1, b1, w2, b2):
    """TokLIP's projector: vq_mapping(GELU(vq_table(codes))) on the gathered code vectors."""
    codes = torch.nn.functional.embedding(indices, table).to(w1.dtype)
    return torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(codes, w1, b1)), w2, b2)


_compiled: dict[str, Callable] = {}


def provider_fn(name: str) -> Callable:
    if name == "eager":
        return eager
    if name == "compile":
        if name not in _compiled:
            _compiled[name] = torch.compile(eager)
        return _compiled[name]
    if name in TRITON:
        from toklip_kernels.lookup_mlp import lookup_mlp

        strategy, det, impl = TRITON[name]
        return lambda idx, table, *p: lookup_mlp(idx, table, *p, strategy=strategy, deterministic=det, table_impl=impl)
    raise ValueError(f"unknown provider {name!r}")


def check(name: str, fn: Callable, table, params, vocab: int, n: int, device) -> tuple[bool, str | None]:
    """Output and gradients on an 8-image batch vs a float32 reference; bound = 3x eager's own error."""
    idx = torch.randint(0, vocab, (min(8, GOAL["B"]), n), device=device)
    out = fn(idx, table, *params)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, dout)
    ref_p = [p.detach().float().requires_grad_() for p in params]
    ref = eager(idx, table.float(), *ref_p)
    ref_grads = torch.autograd.grad(ref, ref_p, dout.float())
    with torch.no_grad():
        bound = 3 * H.max_abs_err(eager(idx, table, *params), ref) + 1e-3
    err = H.max_abs_err(out, ref)
    if not torch.isfinite(out).all() or err > bound:
        return False, f"{name}: output error {err:.3g} > {bound:.3g}"
    for label, g, rg in zip(("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"), grads, ref_grads):
        rel = H.rel_err(g, rg)
        if not torch.isfinite(g).all() or rel > 2e-2:
            return False, f"{name}: {label} gradient relative error {rel:.3g}"
    return True, None


def measure(name: str, shape: dict, mode: str, table, params, dtype, device, reps: int, warmup: int) -> H.Row:
    vocab, width = table.shape[0], params[2].shape[0]
    hidden = params[0].shape[0]
    row = H.Row("lookup_mlp", name, mode, dict(shape, V=vocab, D=width, dtype=str(dtype).replace("torch.", "")))
    n_tok = shape["B"] * shape["N"]
    per_token_flop = 2.0 * n_tok * (table.shape[1] * hidden + hidden * width)

    def body() -> H.Row:
        idx = torch.randint(0, vocab, (shape["B"], shape["N"]), device=device)
        out_bytes = n_tok * width * torch.empty((), dtype=dtype).element_size()
        if name == "copy":
            src = torch.empty(n_tok, width, dtype=dtype, device=device).normal_()
            dst = torch.empty_like(src)
            times = H.time_ms(lambda: dst.copy_(src), reps=reps, warmup=warmup)
            return H.summarize(row, times, nbytes=2 * out_bytes)
        if name == "table-gather":
            from toklip_kernels.lookup_mlp import codebook_table, gather_table

            with torch.no_grad():
                tab = codebook_table(table, *params)
                want = eager(idx, table, *params)
                err = H.max_abs_err(gather_table(idx, tab), want)
                row.ok = err < 0.05
                row.error = None if row.ok else f"gather differs from eager by {err:.3g}"
                times = H.time_ms(lambda: gather_table(idx, tab), reps=reps, warmup=warmup)
            return H.summarize(row, times, flop=per_token_flop, nbytes=2 * out_bytes)
        fn = provider_fn(name)
        row.ok, row.error = check(name, fn, table, params, vocab, shape["N"], device)
        if mode in ("fwd", "infer"):
            with torch.no_grad():
                times = H.time_ms(lambda: fn(idx, table, *params), reps=reps, warmup=warmup)
            return H.summarize(row, times, flop=per_token_flop, nbytes=2 * out_bytes if mode == "infer" else None)
        dout = torch.randn(shape["B"], shape["N"], width, device=device, dtype=dtype)
        if mode == "bwd":
            out = fn(idx, table, *params)
            times = H.time_ms(lambda: torch.autograd.grad(out, params, dout, retain_graph=True), reps=reps,
                              warmup=warmup)
            return H.summarize(row, times, flop=2 * per_token_flop)
        times = H.time_ms(lambda: torch.autograd.grad(fn(idx, table, *params), params, dout), reps=reps,
                          warmup=warmup)
        return H.summarize(row, times, flop=3 * per_token_flop)

    return H.run_guarded(row, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", choices=["full", "goal"], default="full")
    ap.add_argument("--providers", help="comma-separated subset of the training providers")
    ap.add_argument("--modes", default="fwd,bwd,fwd+bwd,infer")
    H.add_run_args(ap)
    args = ap.parse_args(argv)
    run = H.run_setup(ap, args)
    device, dtype, reps, warmup = run.device, run.dtype, run.reps, run.warmup
    vocab, code_dim, width = (64, 8, 32) if args.smoke else (16384, 8, 1152)
    table, params = make_params(vocab, code_dim, width, dtype, device)
    if args.smoke:
        grid = [{"B": 2, "N": 9}]
        GOAL.update(B=2, N=9)
    elif args.shapes == "goal":
        grid = [dict(GOAL)]
    else:
        grid = [{"B": b, "N": n} for n in (576, 577, 256) for b in (256, 128, 32)]
    train = (args.providers or ",".join(["eager", "compile", *TRITON])).split(",")
    if args.smoke:
        train = [p for p in train if p != "compile"]  # compiling on the CPU machine takes minutes
    rows: list[H.Row] = []
    for shape in grid:
        for mode in args.modes.split(","):
            names = train + (["table-gather", "copy"] if mode == "infer" else [])
            for name in names:
                row = measure(name, shape, mode, table, params, dtype, device, reps, warmup)
                rows.append(row)
                status = f"{row.ms:.3f} ms" if row.ms is not None else "-"
                extra = f" {row.gbps:.0f} GB/s" if row.gbps else ""
                print(f"{mode:8s} {shape} {name:20s} {status}{extra} {'' if row.ok else 'FAILED: ' + str(row.error)}",
                      flush=True)
    print()
    H.print_ratio_table(rows, "triton-auto", shape_cols=["B", "N"])
    goals = report_goals(rows, dtype, vocab, width)
    path = H.write_results("bench_lookup_mlp", rows, meta={"goals": goals, "args": vars(args) | {"out": str(args.out)}},
                           out_dir=args.out)
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


def report_goals(rows: list[H.Row], dtype, vocab: int, width: int) -> list[dict]:
    shape = dict(GOAL, V=vocab, D=width, dtype=str(dtype).replace("torch.", ""))
    key = ("fwd+bwd", *sorted(shape.items()))
    mine = H.best(rows, ["triton-auto"], key)
    ref = H.best(rows, ["eager"], key)
    comp = H.best(rows, ["compile"], key)
    infer = ("infer", *sorted(shape.items()))
    gather = H.best(rows, ["table-gather"], infer)
    copy = H.best(rows, ["copy"], infer)
    print(f"\ngoals at B={GOAL['B']}, N={GOAL['N']} ({shape['dtype']}):")
    return [
        H.goal("fwd+bwd vs eager", ref.ms / mine.ms if ref and mine else None, 6.0),
        H.goal("fwd+bwd vs torch.compile", comp.ms / mine.ms if comp and mine else None, 3.0),
        H.goal("frozen gather bandwidth / device copy bandwidth", gather.gbps / copy.gbps if gather and copy else None,
               0.7, unit=""),
    ]


if __name__ == "__main__":
    sys.exit(main())
