"""``flash_attention``: the Triton attention as an autograd op, with input checks and launch configs.

Layout: q, k, v [B, H, N, d] with any strides whose last one is 1 (the views a fused qkv projection gives
need no copy). The output is allocated as [B, N, H, d] memory viewed as [B, H, N, d], so the usual
``out.transpose(1, 2).reshape(B, N, H * d)`` that follows is free.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toklip import InputError
from toklip_kernels import _runtime
from toklip_kernels._launch import Tiles, cdiv, choose, dot_precision

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


def _qk(block_m: int, block_n: int, num_warps: int = 4, num_stages: int = 2) -> Tiles:
    """Attention tiles: `block_m` queries (BLOCK_M) by `block_n` keys (BLOCK_N), no third axis."""
    return Tiles(block_m, block_n, num_warps=num_warps, num_stages=num_stages)


# Interpreter (CPU tests): small tiles, BLOCK_M != BLOCK_N so the stage boundaries are exercised.
INTERPRETER_TILES = {"fwd": _qk(32, 16), "dkdv": _qk(16, 32), "dq": _qk(32, 16)}


def _gpu_candidates(kind: str, width: int) -> list[Tiles]:
    """Launch configs, the default first. `width` = D0 + D1 (72 -> 80). Each default compiles for sm_90 without
    register spills (``python -m toklip_kernels.aot --all`` lists registers, spills and shared memory)."""
    if kind == "fwd":
        if width <= 64:
            return [_qk(128, 64, 8, 3), _qk(64, 64, 4, 3), _qk(128, 128, 8, 2), _qk(128, 32, 8, 3)]
        if width <= 96:
            return [_qk(128, 64, 8, 3), _qk(128, 32, 8, 3), _qk(64, 64, 8, 3), _qk(128, 128, 8, 2)]
        if width <= 128:
            return [_qk(128, 128, 8, 2), _qk(64, 64, 8, 2), _qk(64, 32, 4, 2)]
        return [_qk(32, 32, 8, 2), _qk(64, 32, 8, 2)]
    if kind == "dkdv":  # block_m = queries per step, block_n = keys per program
        if width <= 96:
            return [_qk(32, 128, 8, 3), _qk(32, 64, 8, 3), _qk(16, 64, 8, 3), _qk(16, 128, 8, 2)]
        if width <= 128:
            return [_qk(16, 64, 8, 2), _qk(16, 32, 4, 2), _qk(32, 64, 8, 2)]
        return [_qk(16, 32, 8, 2), _qk(16, 16, 4, 2)]
    if width <= 96:  # dq: block_m = queries per program, block_n = keys per step
        return [_qk(128, 32, 8, 3), _qk(64, 32, 4, 3), _qk(128, 64, 8, 2), _qk(64, 64, 8, 3)]
    if width <= 128:
        return [_qk(64, 32, 8, 2), _qk(64, 16, 4, 2), _qk(128, 32, 8, 2)]
    return [_qk(32, 16, 8, 2), _qk(32, 32, 8, 2)]


def check_inputs(q: Tensor, k: Tensor, v: Tensor, kv_lens: Tensor | None) -> None:
    """InputError for anything the kernels cannot take, naming the problem and the fix."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise InputError(f"flash_attention takes [B, H, N, d] tensors; {name} has shape {tuple(t.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise InputError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise InputError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    b, h, _, d = q.shape
    if k.shape[:2] != (b, h) or v.shape[:2] != (b, h) or k.shape[-1] != d or v.shape[-1] != d:
        raise InputError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: batch, heads and head_dim must match"
        )
    if k.shape[2] != v.shape[2]:
        raise InputError(f"k and v need the same sequence length, got {k.shape[2]} and {v.shape[2]}")
    if d > MAX_HEAD_DIM:
        raise InputError(f"head_dim {d} is larger than the kernels' maximum {MAX_HEAD_DIM}; use attn_backend='sdpa'")
    if kv_lens is not None:
        if kv_lens.shape != (b,) or kv_lens.dtype not in (torch.int32, torch.int64):
            raise InputError(f"kv_lens must be an int32/int64 tensor of shape ({b},), got {kv_lens.dtype} "
                             f"{tuple(kv_lens.shape)}")
        if kv_lens.device != q.device:
            raise InputError(f"kv_lens is on {kv_lens.device}, q on {q.device}")


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _aligned(*ts: Tensor) -> bool:
    """Every row start is 8-element aligned: lets the kernels promise vector-width loads for d = 72."""
    return all(t.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in t.stride()[:3]) for t in ts)


def _empty_bnhd(like: Tensor) -> Tensor:
    b, h, n, d = like.shape
    return _runtime.empty(b, n, h, d, dtype=like.dtype, device=like.device).transpose(1, 2)


def _strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _tiles(kind: str, key: tuple, width: int, run, on_gpu: bool) -> Tiles:  # type: ignore[no-untyped-def]
    return choose((kind, *key), _gpu_candidates(kind, width), run, on_gpu=on_gpu, interpreter=INTERPRETER_TILES[kind])


def forward(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float, kv_lens: Tensor | None
            ) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel: (out [B, H, N_q, d] in q.dtype, lse [B, H, N_q] float32)."""
    from toklip_kernels.attention.triton_fwd import attn_fwd_kernel

    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    d0, d1 = _runtime.split_head_dim(d)
    out = _empty_bnhd(q)
    lse = _runtime.empty(b, h, n_q, dtype=torch.float32, device=q.device)
    on_gpu = _runtime.gpu_configs(q)
    aligned = _aligned(q, k, v, out)  # a promise to the compiler; the interpreter ignores it
    kv = kv_lens if kv_lens is not None else lse  # unused pointer when HAS_KV_LEN is False

    def run(cfg: Tiles) -> None:
        grid = (cdiv(n_q, cfg.block_m), b * h)
        attn_fwd_kernel[grid](
            q, k, v, out, lse, kv, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            h, n_q, n_k, scale * LOG2E,
            HEAD_DIM=d, D0=d0, D1=d1, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=causal,
            HAS_KV_LEN=kv_lens is not None, ALIGNED=aligned, PRECISION=dot_precision(q.dtype),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    key = (q.dtype, d, causal, _bucket(n_q), _bucket(b * h))
    run(_tiles("fwd", key, d0 + d1, run, on_gpu))
    return out, lse


def backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *, causal: bool, scale: float,
             kv_lens: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the three backward kernels: (dq, dk, dv), each [B, H, N, d] in the input dtype."""
    from toklip_kernels.attention.triton_bwd import attn_bwd_delta_kernel, attn_bwd_dkdv_kernel, attn_bwd_dq_kernel

    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    d0, d1 = _runtime.split_head_dim(d)
    do = _last_dim_contiguous(do)
    dq, dk, dv = _empty_bnhd(q), _empty_bnhd(k), _empty_bnhd(v)
    delta = _runtime.empty(*lse.shape, dtype=torch.float32, device=lse.device)
    on_gpu = _runtime.gpu_configs(q)
    aligned = _aligned(q, k, v, do, dq, dk, dv)
    kv = kv_lens if kv_lens is not None else lse
    block_delta = 64 if on_gpu else 32
    attn_bwd_delta_kernel[(cdiv(n_q, block_delta), b * h)](
        out, do, delta, *_strides(out), *_strides(do), h, n_q,
        HEAD_DIM=d, D_PAD=_runtime.next_pow2(max(d, 16)), BLOCK_M=block_delta, ALIGNED=aligned,
    )
    common = dict(HEAD_DIM=d, D0=d0, D1=d1, CAUSAL=causal, HAS_KV_LEN=kv_lens is not None, ALIGNED=aligned,
                  PRECISION=dot_precision(q.dtype))
    key = (q.dtype, d, causal, _bucket(n_q), _bucket(b * h))

    def run_dkdv(cfg: Tiles) -> None:
        attn_bwd_dkdv_kernel[(cdiv(n_k, cfg.block_n), b * h)](
            q, k, v, do, dk, dv, lse, delta, kv, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dk), *_strides(dv), h, n_q, n_k, scale * LOG2E, scale,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
        )

    def run_dq(cfg: Tiles) -> None:
        attn_bwd_dq_kernel[(cdiv(n_q, cfg.block_m), b * h)](
            q, k, v, do, dq, lse, delta, kv, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dq), h, n_q, n_k, scale * LOG2E, scale,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
        )

    run_dkdv(_tiles("dkdv", key, d0 + d1, run_dkdv, on_gpu))
    run_dq(_tiles("dq", key, d0 + d1, run_dq, on_gpu))
    return dq, dk, dv


def _bucket(n: int) -> int:
    """Shape keys for autotuning: the next power of two, so 576 and 577 share a config."""
    return _runtime.next_pow2(n)


class FlashAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kv_lens, causal, scale):  # type: ignore[no-untyped-def, override]
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        out, lse = forward(q, k, v, causal=causal, scale=scale, kv_lens=kv_lens)
        ctx.save_for_backward(q, k, v, out, lse, kv_lens)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):  # type: ignore[no-untyped-def, override]
        q, k, v, out, lse, kv_lens = ctx.saved_tensors
        dq, dk, dv = backward(dout, q, k, v, out, lse, causal=ctx.causal, scale=ctx.scale, kv_lens=kv_lens)
        return dq, dk, dv, None, None, None


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
    kv_lens: Tensor | None = None, return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention with the Triton kernels: softmax(q k^T * scale [+ causal / key-length mask]) v.

    q, k, v: [B, H, N, d] (N_q may differ from N_k), float16 / bfloat16 / float32 on CUDA (float32 / float16
    under TRITON_INTERPRET=1 on CPU). ``kv_lens`` [B] int: keys j >= kv_lens[b] are masked. Returns out
    [B, H, N_q, d] (and the float32 logsumexp [B, H, N_q] with ``return_lse``). Differentiable in q, k, v.
    """
    check_inputs(q, k, v, kv_lens)
    why = _runtime.reason(q)
    if why is not None:
        raise InputError(f"flash_attention cannot run here: {why}. Use toklip_kernels.attention.attention_reference")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = FlashAttentionFn.apply(q, k, v, kv_lens, bool(causal), scale)
    return (out, lse) if return_lse else out
