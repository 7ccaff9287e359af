"""Codebook-space kernels: gather rows of the precomputed [V, D] table, and segment-sum dOut per code.

``gather_kernel``: out[t] = table[idx[t]] (+ pos[t % n_pos]), memory bound (the table of a 16384-code,
1152-wide bf16 model is 37.7 MB and stays in an H100's L2).
``scatter_add_kernel``: dT[idx[t]] += dOut[t] with float32 atomics (fast, summation order varies).
``segment_sum_kernel``: the deterministic form over tokens sorted by code: one program per (code, D block)
adds its segment in a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from toklip_kernels.lookup_mlp.triton_mlp import _rows


@triton.jit
def gather_kernel(
    IDX, TAB, POS, OUT, T, V, D, N_POS, stride_trow, stride_pos, stride_out,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, HAS_POS: tl.constexpr,
):
    """Grid (cdiv(T, BLOCK_T), cdiv(D, BLOCK_D))."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tok_ok = offs_t < T
    d_ok = offs_d < D
    rows, ok = _rows(IDX, offs_t, T, V, False)
    rows = rows.to(tl.int64)
    vals = tl.load(TAB + rows[:, None] * stride_trow + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_POS:
        prow = (offs_t % N_POS).to(tl.int64)
        pos = tl.load(POS + prow[:, None] * stride_pos + offs_d[None, :], mask=tok_ok[:, None] & d_ok[None, :],
                      other=0.0)
        vals = vals.to(tl.float32) + pos.to(tl.float32)
    tl.store(OUT + offs_t.to(tl.int64)[:, None] * stride_out + offs_d[None, :], vals.to(OUT.dtype.element_ty),
             mask=tok_ok[:, None] & d_ok[None, :])


@triton.jit
def scatter_add_kernel(
    IDX, DOUT, DTAB, T, V, D, stride_dout, stride_dtab,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """DTAB [V, D] float32 (zeroed by the host) += dOut rows by index. Grid (cdiv(T, BLOCK_T), cdiv(D, BLOCK_D))."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    rows, ok = _rows(IDX, offs_t, T, V, False)
    rows = rows.to(tl.int64)
    mask = ok[:, None] & d_ok[None, :]
    g = tl.load(DOUT + offs_t.to(tl.int64)[:, None] * stride_dout + offs_d[None, :], mask=mask, other=0.0)
    tl.atomic_add(DTAB + rows[:, None] * stride_dtab + offs_d[None, :], g.to(tl.float32), mask=mask)


@triton.jit
def segment_sum_kernel(
    ORDER, OFFSETS, DOUT, DTAB, D, stride_dout, stride_dtab,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """DTAB[v] = sum of dOut[ORDER[i]] for i in [OFFSETS[v], OFFSETS[v+1]). Grid (V, cdiv(D, BLOCK_D))."""
    v = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    start = tl.load(OFFSETS + v)
    end = tl.load(OFFSETS + v + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s0 in range(start, end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < end
        toks = tl.load(ORDER + offs_s, mask=s_ok, other=0).to(tl.int64)
        g = tl.load(DOUT + toks[:, None] * stride_dout + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :],
                    other=0.0)
        acc += tl.sum(g.to(tl.float32), 0)
    tl.store(DTAB + v.to(tl.int64) * stride_dtab + offs_d, acc, mask=d_ok)
