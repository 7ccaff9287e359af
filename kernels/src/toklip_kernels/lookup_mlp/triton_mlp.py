"""Fused lookup + MLP kernels: out[t] = W2 gelu(W1 table[idx[t]] + b1) + b2 (+ pos[t % n_pos]).

The 4D-wide hidden layer lives only in registers: the forward gathers code vectors, runs the first GEMM
(K = code dim padded to 16), the exact erf GELU and the second GEMM in one kernel. The backward recomputes
the hidden tile from the code vectors (K = 8, cheap) instead of reading it back:

- ``mlp_bwd_dw2_kernel``: dW2 = dOut^T H (and db2), one program per (D block, hidden block, token split);
- ``mlp_bwd_dw1_kernel``: dH = dOut W2, dPre = dH * GELU'(pre), dW1 = dPre^T C (and db1), one program per
  (hidden block, token split).

Token splits write float32 partial sums that the host adds in a fixed order, so the backward is
deterministic. With ``IDENTITY`` the rows are the codebook rows themselves (no index), which is how the
codebook-space strategy builds its [V, D] table and runs the MLP backward over it.
Indices outside [0, V) are never dereferenced (masked to row 0); the host rejects them before launching.
"""

from __future__ import annotations

import triton
import triton.language as tl

SQRT1_2 = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)


@triton.jit
def _rows(IDX, offs_t, T, V, IDENTITY: tl.constexpr):
    """Codebook row of each token, and whether it is a real token with an in-range index."""
    tok_ok = offs_t < T
    if IDENTITY:
        return offs_t, tok_ok
    idx = tl.load(IDX + offs_t, mask=tok_ok, other=0)
    ok = tok_ok & (idx >= 0) & (idx < V)
    return tl.where(ok, idx, 0), ok


@triton.jit
def _codes(TABLE, stride_tab, rows, ok, offs_c, C):
    """[BLOCK_T, C_PAD] code vectors (zero padded beyond C and for masked rows), in the table's dtype (the host
    casts the table to the compute dtype)."""
    ptrs = TABLE + rows.to(tl.int64)[:, None] * stride_tab + offs_c[None, :]
    return tl.load(ptrs, mask=ok[:, None] & (offs_c < C)[None, :], other=0.0)


@triton.jit
def _pre_activation(codes, W1, B1, stride_w1, offs_h, offs_c, C, HID, PRECISION: tl.constexpr):
    """codes [BT, C_PAD] @ W1[h, :]^T + b1[h] -> [BT, BH] float32."""
    h_ok = offs_h < HID
    w1t = tl.load(W1 + offs_h[None, :] * stride_w1 + offs_c[:, None], mask=(offs_c < C)[:, None] & h_ok[None, :],
                  other=0.0)
    b1 = tl.load(B1 + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    return tl.dot(codes, w1t, input_precision=PRECISION) + b1[None, :]


@triton.jit
def mlp_fwd_kernel(
    IDX, TABLE, W1, B1, W2, B2, POS, OUT,
    T, V, HID, D, N_POS,
    stride_tab, stride_w1, stride_w2, stride_pos, stride_out,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    IDENTITY: tl.constexpr, HAS_POS: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(T, BLOCK_T), cdiv(D, BLOCK_D)). OUT [T, D]."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, C_PAD)
    d_ok = offs_d < D
    rows, ok = _rows(IDX, offs_t, T, V, IDENTITY)
    codes = _codes(TABLE, stride_tab, rows, ok, offs_c, C)
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        pre = _pre_activation(codes, W1, B1, stride_w1, offs_h, offs_c, C, HID, PRECISION)
        w2t = tl.load(W2 + offs_d[None, :] * stride_w2 + offs_h[:, None], mask=(offs_h < HID)[:, None] & d_ok[None, :],
                      other=0.0)
        acc += tl.dot(_gelu(pre).to(w2t.dtype), w2t, input_precision=PRECISION)
    acc += tl.load(B2 + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    tok_ok = offs_t < T
    if HAS_POS:
        prow = (offs_t % N_POS).to(tl.int64)
        acc += tl.load(POS + prow[:, None] * stride_pos + offs_d[None, :], mask=tok_ok[:, None] & d_ok[None, :],
                       other=0.0).to(tl.float32)
    out_ptrs = OUT + offs_t.to(tl.int64)[:, None] * stride_out + offs_d[None, :]
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=tok_ok[:, None] & d_ok[None, :])


@triton.jit
def _recompute_tile(IDX, TABLE, W1, B1, offs_t, t_end, V, stride_tab, stride_w1, offs_h, offs_c,
                    C: tl.constexpr, HID, IDENTITY: tl.constexpr, PRECISION: tl.constexpr):
    """Backward: (valid-token mask, code vectors, pre-activation) of a token tile, recomputed from the codes."""
    rows, ok = _rows(IDX, offs_t, t_end, V, IDENTITY)
    codes = _codes(TABLE, stride_tab, rows, ok, offs_c, C)
    return ok, codes, _pre_activation(codes, W1, B1, stride_w1, offs_h, offs_c, C, HID, PRECISION)


@triton.jit
def _dout_tile(DOUT, offs_t, stride_dout, offs_d, ok, d_ok):
    return tl.load(DOUT + offs_t.to(tl.int64)[:, None] * stride_dout + offs_d[None, :],
                   mask=ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def mlp_bwd_dw2_kernel(
    IDX, TABLE, W1, B1, DOUT, PDW2, PDB2,
    T, V, HID, D, TOKENS_PER_SPLIT,
    stride_tab, stride_w1, stride_dout,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    IDENTITY: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(D, BLOCK_D), cdiv(HID, BLOCK_H), splits). PDW2 [splits, D, HID], PDB2 [splits, D] float32."""
    pid_d = tl.program_id(0)
    pid_h = tl.program_id(1)
    split = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, C_PAD)
    d_ok = offs_d < D
    acc = tl.zeros([BLOCK_D, BLOCK_H], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_D], dtype=tl.float32)
    t_begin = split * TOKENS_PER_SPLIT
    t_end = tl.minimum(t_begin + TOKENS_PER_SPLIT, T)
    for t0 in range(t_begin, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        ok, codes, pre = _recompute_tile(IDX, TABLE, W1, B1, offs_t, t_end, V, stride_tab, stride_w1, offs_h, offs_c,
                                         C, HID, IDENTITY, PRECISION)
        dout = _dout_tile(DOUT, offs_t, stride_dout, offs_d, ok, d_ok)
        hid = tl.where(ok[:, None], _gelu(pre), 0.0).to(dout.dtype)
        acc += tl.dot(tl.trans(dout), hid, input_precision=PRECISION)
        acc_b += tl.sum(dout.to(tl.float32), 0)
    out = PDW2 + split.to(tl.int64) * D * HID + offs_d[:, None] * HID + offs_h[None, :]
    tl.store(out, acc, mask=d_ok[:, None] & (offs_h < HID)[None, :])
    if pid_h == 0:
        tl.store(PDB2 + split.to(tl.int64) * D + offs_d, acc_b, mask=d_ok)


@triton.jit
def mlp_bwd_dw1_kernel(
    IDX, TABLE, W1, B1, W2, DOUT, PDW1, PDB1,
    T, V, HID, D, TOKENS_PER_SPLIT,
    stride_tab, stride_w1, stride_w2, stride_dout,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    IDENTITY: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(HID, BLOCK_H), splits). PDW1 [splits, HID, C_PAD], PDB1 [splits, HID] float32."""
    pid_h = tl.program_id(0)
    split = tl.program_id(1)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, C_PAD)
    h_ok = offs_h < HID
    acc = tl.zeros([BLOCK_H, C_PAD], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_H], dtype=tl.float32)
    t_begin = split * TOKENS_PER_SPLIT
    t_end = tl.minimum(t_begin + TOKENS_PER_SPLIT, T)
    for t0 in range(t_begin, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        ok, codes, pre = _recompute_tile(IDX, TABLE, W1, B1, offs_t, t_end, V, stride_tab, stride_w1, offs_h, offs_c,
                                         C, HID, IDENTITY, PRECISION)
        dh = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            dout = _dout_tile(DOUT, offs_t, stride_dout, offs_d, ok, d_ok)
            w2 = tl.load(W2 + offs_d[:, None] * stride_w2 + offs_h[None, :], mask=d_ok[:, None] & h_ok[None, :],
                         other=0.0)
            dh += tl.dot(dout.to(w2.dtype), w2, input_precision=PRECISION)
        dpre = tl.where(ok[:, None], dh * _gelu_grad(pre), 0.0)
        acc += tl.dot(tl.trans(dpre.to(codes.dtype)), codes, input_precision=PRECISION)
        acc_b += tl.sum(dpre, 0)
    out = PDW1 + split.to(tl.int64) * HID * C_PAD + offs_h[:, None] * C_PAD + offs_c[None, :]
    tl.store(out, acc, mask=h_ok[:, None])
    tl.store(PDB1 + split.to(tl.int64) * HID + offs_h, acc_b, mask=h_ok)
