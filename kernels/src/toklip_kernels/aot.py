"""Compile every kernel for a GPU target on a machine without a GPU (Triton's bundled LLVM + ptxas).

This catches what the interpreter cannot: compile errors (types, ``tl.dot`` shapes below 16), shared memory
beyond the device limit, and register spills, for each launch config the heuristics or the autotuner can
pick. It does not run anything: numerics and speed still need a GPU (``benchmarks/run_gpu.sh``).

    python -m toklip_kernels.aot                 # default configs, sm_90 (H100), bf16
    python -m toklip_kernels.aot --all --arch 80  # every autotune candidate, A100
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}  # bytes per block


@dataclass
class Result:
    kernel: str
    config: str
    shared_bytes: int
    registers: int
    spill_bytes: int
    wgmma: int = 0  # Hopper tensor-core instructions in the PTX (0 on other archs)
    scalar_loads: int = 0  # 16-bit global loads issued one element at a time (the unaligned-d=72 trap)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _ptxas_info(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill store + load bytes) from ``ptxas -v``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}",
             src, "-o", os.path.join(tmp, "k.o")], capture_output=True, text=True, check=True,
        )
    log = proc.stderr + proc.stdout
    regs = max((int(m) for m in re.findall(r"Used (\d+) registers", log)), default=0)
    spills = sum(int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return regs, spills


# Integer arguments of a real TokLIP-L launch (d = 72, H = 16, N = 577, packed qkv [B, N, 3, H, d] inputs,
# [B, N, H, d] outputs, V = 16384, c = 8, D = 1152): Triton specialises those divisible by 16 at launch, which
# decides whether loads vectorise, so the ahead-of-time compile must see the same.
TYPICAL_INTS = {
    "stride_qb": 577 * 3456, "stride_qh": 72, "stride_qn": 3456, "stride_kb": 577 * 3456, "stride_kh": 72,
    "stride_kn": 3456, "stride_vb": 577 * 3456, "stride_vh": 72, "stride_vn": 3456,
    **{f"stride_{t}{a}": v for t in ("o", "do", "dq", "dk", "dv") for a, v in (("b", 577 * 1152), ("h", 72),
                                                                              ("n", 1152))},
    "H": 16, "N_Q": 577, "N_K": 577,
    "T": 147456, "V": 16384, "C": 8, "HID": 4608, "D": 1152, "N_POS": 576, "TOKENS_PER_SPLIT": 4096,
    "stride_tab": 8, "stride_w1": 8, "stride_w2": 4608, "stride_pos": 1152, "stride_out": 1152, "stride_dout": 1152,
    "stride_dtab": 1152, "stride_trow": 1152,
}


# The same for contiguous [B, H, N, d] tensors: row stride 72, which Triton does not specialise (not a multiple
# of 16), so vector loads depend on the kernels' own alignment hints.
CONTIGUOUS_INTS = {f"stride_{t}{a}": v for t in ("q", "k", "v", "o", "do", "dq", "dk", "dv")
                   for a, v in (("b", 16 * 577 * 72), ("h", 577 * 72), ("n", 72))}


def _compile(kernel: Any, signature: dict[str, str], constexprs: dict[str, Any], options: dict[str, Any],
             arch: int, ints: dict[str, int] | None = None) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    aligned = [i for i, name in enumerate(kernel.arg_names) if signature.get(name, "").startswith("*")
               or (signature.get(name) == "i32" and (ints or TYPICAL_INTS).get(name, 1) % 16 == 0)]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    sig = {name: signature.get(name, "constexpr") for name in kernel.arg_names}
    label = ", ".join(f"{k}={v}" for k, v in {**constexprs, **options}.items() if k.isupper() or k.startswith("num_"))
    try:
        compiled = triton.compile(ASTSource(kernel, sig, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                                  options=options)
        ptx = compiled.asm["ptx"]
        regs, spills = _ptxas_info(ptx, arch)
        shared = int(compiled.metadata.shared)
        err = None
        if shared > SHARED_LIMIT.get(arch, 101376):
            err = f"needs {shared} bytes of shared memory; sm_{arch} allows {SHARED_LIMIT.get(arch)}"
        return Result(kernel.__name__, label, shared, regs, spills, wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
                      scalar_loads=len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.b16 ", ptx)), error=err)
    except Exception as e:  # noqa: BLE001 - report every failing config, not just the first
        return Result(kernel.__name__, label, 0, 0, 0, error=f"{type(e).__name__}: {str(e)[:2000]}")


def _ints(*names: str) -> dict[str, str]:
    return {n: "i32" for n in names}


def attention_jobs(dtype: str, head_dims: list[int], all_candidates: bool) -> list[tuple]:
    from toklip_kernels import _runtime
    from toklip_kernels.attention import function as fn
    from toklip_kernels.attention.triton_bwd import attn_bwd_delta_kernel, attn_bwd_dkdv_kernel, attn_bwd_dq_kernel
    from toklip_kernels.attention.triton_fwd import attn_fwd_kernel

    strides = [f"stride_{t}{a}" for t in ("q", "k", "v", "o", "do", "dk", "dv", "dq") for a in ("b", "h", "n")]
    base = {**_ints(*strides, "H", "N_Q", "N_K"), "qk_scale": "fp32", "sm_scale": "fp32",
            **{p: f"*{dtype}" for p in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")},
            "LSE": "*fp32", "DELTA": "*fp32", "KV_LEN": "*i64"}
    jobs = []
    for d in head_dims:
        d0, d1 = _runtime.split_head_dim(d)
        for kind, kernel in (("fwd", attn_fwd_kernel), ("dkdv", attn_bwd_dkdv_kernel), ("dq", attn_bwd_dq_kernel)):
            cands = fn._gpu_candidates(kind, d0 + d1)
            for cfg in cands if all_candidates else cands[:1]:
                for causal in (True, False):
                    const = dict(HEAD_DIM=d, D0=d0, D1=d1, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=causal,
                                 HAS_KV_LEN=False, ALIGNED=True, PRECISION="tf32")
                    jobs.append((kernel, base, const, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}))
        jobs.append((attn_bwd_delta_kernel, {**base, **_ints("stride_ob", "stride_oh", "stride_on", "stride_dob",
                                                             "stride_doh", "stride_don")},
                     dict(HEAD_DIM=d, D_PAD=_runtime.next_pow2(d), BLOCK_M=64, ALIGNED=True), {"num_warps": 4}))
    return jobs


def lookup_jobs(dtype: str, all_candidates: bool) -> list[tuple]:
    from toklip_kernels.lookup_mlp import launch
    from toklip_kernels.lookup_mlp.triton_mlp import mlp_bwd_dw1_kernel, mlp_bwd_dw2_kernel, mlp_fwd_kernel
    from toklip_kernels.lookup_mlp.triton_table import gather_kernel, scatter_add_kernel, segment_sum_kernel

    sig = {**_ints("T", "V", "C", "HID", "D", "N_POS", "TOKENS_PER_SPLIT", "stride_tab", "stride_w1", "stride_w2",
                   "stride_pos", "stride_out", "stride_dout", "stride_dtab", "stride_trow"),
           "IDX": "*i64", "ORDER": "*i64", "OFFSETS": "*i64",
           **{p: f"*{dtype}" for p in ("TABLE", "W1", "B1", "W2", "B2", "POS", "OUT", "DOUT", "TAB")},
           **{p: "*fp32" for p in ("PDW2", "PDB2", "PDW1", "PDB1", "DTAB")}}
    jobs = []
    for kind, kernel in (("fwd", mlp_fwd_kernel), ("dw2", mlp_bwd_dw2_kernel), ("dw1", mlp_bwd_dw1_kernel)):
        cands = launch.GPU_CANDIDATES[kind]
        for cfg in cands if all_candidates else cands[:1]:
            const = dict(C=8, C_PAD=16, BLOCK_T=cfg.block_m, BLOCK_D=cfg.block_n, BLOCK_H=cfg.block_k, IDENTITY=False,
                         PRECISION="tf32")
            if kind == "fwd":
                const["HAS_POS"] = True
            jobs.append((kernel, sig, const, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}))
    for kind, kernel in (("gather", gather_kernel), ("scatter", scatter_add_kernel), ("segment", segment_sum_kernel)):
        cands = launch.GPU_CANDIDATES[kind]
        for cfg in cands if all_candidates else cands[:1]:
            const: dict[str, Any] = {"BLOCK_D": cfg.block_n}
            if kind == "segment":
                const["BLOCK_S"] = cfg.block_m
            else:
                const["BLOCK_T"] = cfg.block_m
            if kind == "gather":
                const["HAS_POS"] = True
            jobs.append((kernel, sig, const, {"num_warps": cfg.num_warps}))
    return jobs


def check(arch: int = 90, dtype: str = "bf16", head_dims: list[int] | None = None, all_candidates: bool = False,
          ops: tuple[str, ...] = ("attention", "lookup_mlp"), layout: str = "packed") -> list[Result]:
    """Compile the kernels for sm_<arch>; one Result per (kernel, config). ``layout``: the attention inputs'
    memory layout whose strides are assumed (``packed`` qkv views or ``contiguous`` [B, H, N, d])."""
    ints = TYPICAL_INTS if layout == "packed" else {**TYPICAL_INTS, **CONTIGUOUS_INTS}
    if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    jobs = []
    if "attention" in ops:
        jobs += attention_jobs(dtype, head_dims or [72], all_candidates)
    if "lookup_mlp" in ops:
        jobs += lookup_jobs(dtype, all_candidates)
    return [_compile(kernel, {k: v for k, v in sig.items() if k in kernel.arg_names}, const, opts, arch, ints)
            for kernel, sig, const, opts in jobs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100, 80 = A100)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--head-dims", default="72", help="comma-separated head dims for attention")
    p.add_argument("--all", action="store_true", help="every autotune candidate, not just the default configs")
    p.add_argument("--ops", default="attention,lookup_mlp")
    p.add_argument("--layout", default="packed", choices=["packed", "contiguous"],
                   help="attention input strides to assume: packed qkv views (the model) or contiguous [B, H, N, d]")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = check(args.arch, args.dtype, [int(x) for x in args.head_dims.split(",")], args.all,
                    tuple(args.ops.split(",")), args.layout)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=1))
    else:
        for r in results:
            status = "ok" if r.ok else f"FAILED: {r.error}"
            print(f"{r.kernel:24s} regs={r.registers:3d} spill={r.spill_bytes:5d}B smem={r.shared_bytes:6d}B "
                  f"wgmma={r.wgmma:3d} scalar-loads={r.scalar_loads:3d}  {r.config}  {status}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
