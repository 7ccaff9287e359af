"""Flash-attention backward in Triton (FlashAttention-2 scheme, no atomics, so it is deterministic).

Three kernels: ``delta = rowsum(dO * O)``; dK/dV with one program per key block looping over query blocks;
dQ with one program per query block looping over key blocks. Probabilities are recomputed from the saved
logsumexp. Head dims split into main + tail exactly as in the forward (see triton_fwd).
"""

from __future__ import annotations

import triton
import triton.language as tl

from toklip_kernels.attention.triton_fwd import (
    _head_base,
    _key_len,
    _key_stages,
    _row_stride,
    _tile_ptrs,
    _tile_ptrs_t,
)

LOG2E = 1.4426950408889634


@triton.jit
def attn_bwd_delta_kernel(
    O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, H, N_Q,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, ALIGNED: tl.constexpr,
):
    """DELTA[bh, i] = sum_d O[b,h,i,d] * dO[b,h,i,d] in float32. Grid (cdiv(N_Q, BLOCK_M), B*H)."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    o_ptr = _head_base(O, b, h, stride_ob, stride_oh, ALIGNED)
    do_ptr = _head_base(DO, b, h, stride_dob, stride_doh, ALIGNED)
    stride_on = _row_stride(stride_on, ALIGNED)
    stride_don = _row_stride(stride_don, ALIGNED)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(_tile_ptrs(o_ptr, offs_m, stride_on, offs_d), mask=mask, other=0.0)
    do = tl.load(_tile_ptrs(do_ptr, offs_m, stride_don, offs_d), mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.jit
def _load_rows(base, offs, stride, offs_d, ok, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    if MASKED:
        return tl.load(_tile_ptrs(base, offs, stride, offs_d), mask=ok[:, None] & d_ok[None, :], other=0.0)
    elif EVEN_D:
        return tl.load(_tile_ptrs(base, offs, stride, offs_d))
    else:
        return tl.load(_tile_ptrs(base, offs, stride, offs_d), mask=d_ok[None, :], other=0.0)


@triton.jit
def _load_rows_t(base, offs, stride, offs_d, ok, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    if MASKED:
        return tl.load(_tile_ptrs_t(base, offs, stride, offs_d), mask=d_ok[:, None] & ok[None, :], other=0.0)
    elif EVEN_D:
        return tl.load(_tile_ptrs_t(base, offs, stride, offs_d))
    else:
        return tl.load(_tile_ptrs_t(base, offs, stride, offs_d), mask=d_ok[:, None], other=0.0)


@triton.jit
def _dkdv_block(
    dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, stride_qn, stride_don, lse_base, delta_base,
    offs_n, key_ok, start_m, N_Q, qk_scale, offs_d0, offs_d1,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, HAS_TAIL: tl.constexpr, EVEN_D0: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < N_Q
    d0_ok = offs_d0 < HEAD_DIM
    qt0 = _load_rows_t(q_base, offs_m, stride_qn, offs_d0, row_ok, d0_ok, MASKED, EVEN_D0)
    do0 = _load_rows(do_base, offs_m, stride_don, offs_d0, row_ok, d0_ok, MASKED, EVEN_D0)
    if MASKED:
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
    else:
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # empty rows: p = 0
    qkt = tl.dot(k0, qt0, input_precision=PRECISION)
    if HAS_TAIL:
        d1_ok = (D0 + offs_d1) < HEAD_DIM
        qt1 = _load_rows_t(q_base + D0, offs_m, stride_qn, offs_d1, row_ok, d1_ok, True, False)
        do1 = _load_rows(do_base + D0, offs_m, stride_don, offs_d1, row_ok, d1_ok, True, False)
        qkt += tl.dot(k1, qt1, input_precision=PRECISION)
    logit = qkt * qk_scale - lse[None, :]
    if MASKED:  # mask before exp2: a masked logit may be large and must not overflow
        keep = key_ok[:, None] & row_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_m[None, :] >= offs_n[:, None])
        logit = tl.where(keep, logit, float("-inf"))
    pt = tl.math.exp2(logit)
    dv0 += tl.dot(pt.to(do0.dtype), do0, input_precision=PRECISION)
    dpt = tl.dot(v0, tl.trans(do0), input_precision=PRECISION)
    if HAS_TAIL:
        dv1 += tl.dot(pt.to(do1.dtype), do1, input_precision=PRECISION)
        dpt += tl.dot(v1, tl.trans(do1), input_precision=PRECISION)
    dst = (pt * (dpt - delta[None, :])).to(qt0.dtype)
    dk0 += tl.dot(dst, tl.trans(qt0), input_precision=PRECISION)
    if HAS_TAIL:
        dk1 += tl.dot(dst, tl.trans(qt1), input_precision=PRECISION)
    return dk0, dk1, dv0, dv1


@triton.jit
def attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, KV_LEN,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    H, N_Q, N_K, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LEN: tl.constexpr, ALIGNED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(N_K, BLOCK_N), B*H). Writes every row of DK/DV (zeros for masked keys)."""
    HAS_TAIL: tl.constexpr = D1 > 0
    EVEN_D0: tl.constexpr = D0 <= HEAD_DIM
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_ptr = _head_base(Q, b, h, stride_qb, stride_qh, ALIGNED)
    k_ptr = _head_base(K, b, h, stride_kb, stride_kh, ALIGNED)
    v_ptr = _head_base(V, b, h, stride_vb, stride_vh, ALIGNED)
    do_ptr = _head_base(DO, b, h, stride_dob, stride_doh, ALIGNED)
    dk_ptr = _head_base(DK, b, h, stride_dkb, stride_dkh, ALIGNED)
    dv_ptr = _head_base(DV, b, h, stride_dvb, stride_dvh, ALIGNED)
    stride_qn = _row_stride(stride_qn, ALIGNED)
    stride_kn = _row_stride(stride_kn, ALIGNED)
    stride_vn = _row_stride(stride_vn, ALIGNED)
    stride_don = _row_stride(stride_don, ALIGNED)
    stride_dkn = _row_stride(stride_dkn, ALIGNED)
    stride_dvn = _row_stride(stride_dvn, ALIGNED)
    n_k = _key_len(KV_LEN, b, N_K, HAS_KV_LEN)
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, D0)
    offs_d1 = tl.arange(0, D1 if HAS_TAIL else 16)
    key_ok = offs_n < n_k
    d0_ok = offs_d0 < HEAD_DIM
    k0 = tl.load(_tile_ptrs(k_ptr, offs_n, stride_kn, offs_d0), mask=key_ok[:, None] & d0_ok[None, :], other=0.0)
    v0 = tl.load(_tile_ptrs(v_ptr, offs_n, stride_vn, offs_d0), mask=key_ok[:, None] & d0_ok[None, :], other=0.0)
    k1 = k0
    v1 = v0
    if HAS_TAIL:
        d1_ok = (D0 + offs_d1) < HEAD_DIM
        k1 = tl.load(_tile_ptrs(k_ptr + D0, offs_n, stride_kn, offs_d1), mask=key_ok[:, None] & d1_ok[None, :],
                     other=0.0)
        v1 = tl.load(_tile_ptrs(v_ptr + D0, offs_n, stride_vn, offs_d1), mask=key_ok[:, None] & d1_ok[None, :],
                     other=0.0)
    dk0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dk1 = tl.zeros([BLOCK_N, D1 if HAS_TAIL else 16], dtype=tl.float32)
    dv1 = tl.zeros([BLOCK_N, D1 if HAS_TAIL else 16], dtype=tl.float32)

    lse_base = LSE + bh.to(tl.int64) * N_Q
    delta_base = DELTA + bh.to(tl.int64) * N_Q
    if start_n < n_k:
        # query blocks: [lo, full) need the causal mask; [full, tail) need none; [max(full, tail), N_Q) the row mask.
        # A key block that crosses n_k keeps the mask everywhere.
        if CAUSAL:
            lo = (start_n // BLOCK_M) * BLOCK_M
            full = tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M
        else:
            lo = 0
            full = 0
        tail = (N_Q // BLOCK_M) * BLOCK_M
        if start_n + BLOCK_N > n_k:
            full = tl.maximum(full, tail)  # everything goes through the masked loops below
        for start_m in range(lo, tl.minimum(full, N_Q), BLOCK_M):
            dk0, dk1, dv0, dv1 = _dkdv_block(
                dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_ptr, do_ptr, stride_qn, stride_don, lse_base,
                delta_base, offs_n, key_ok, start_m, N_Q, qk_scale, offs_d0, offs_d1,
                HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_M, True, CAUSAL, PRECISION,
            )
        for start_m in range(full, tail, BLOCK_M):
            dk0, dk1, dv0, dv1 = _dkdv_block(
                dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_ptr, do_ptr, stride_qn, stride_don, lse_base,
                delta_base, offs_n, key_ok, start_m, N_Q, qk_scale, offs_d0, offs_d1,
                HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_M, False, CAUSAL, PRECISION,
            )
        for start_m in range(tl.maximum(full, tail), N_Q, BLOCK_M):
            dk0, dk1, dv0, dv1 = _dkdv_block(
                dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_ptr, do_ptr, stride_qn, stride_don, lse_base,
                delta_base, offs_n, key_ok, start_m, N_Q, qk_scale, offs_d0, offs_d1,
                HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_M, True, CAUSAL, PRECISION,
            )

    store_ok = offs_n < N_K
    dk0 = tl.where(key_ok[:, None], dk0 * sm_scale, 0.0)
    dv0 = tl.where(key_ok[:, None], dv0, 0.0)
    tl.store(_tile_ptrs(dk_ptr, offs_n, stride_dkn, offs_d0), dk0.to(DK.dtype.element_ty),
             mask=store_ok[:, None] & d0_ok[None, :])
    tl.store(_tile_ptrs(dv_ptr, offs_n, stride_dvn, offs_d0), dv0.to(DV.dtype.element_ty),
             mask=store_ok[:, None] & d0_ok[None, :])
    if HAS_TAIL:
        dk1 = tl.where(key_ok[:, None], dk1 * sm_scale, 0.0)
        dv1 = tl.where(key_ok[:, None], dv1, 0.0)
        tl.store(_tile_ptrs(dk_ptr + D0, offs_n, stride_dkn, offs_d1), dk1.to(DK.dtype.element_ty),
                 mask=store_ok[:, None] & d1_ok[None, :])
        tl.store(_tile_ptrs(dv_ptr + D0, offs_n, stride_dvn, offs_d1), dv1.to(DV.dtype.element_ty),
                 mask=store_ok[:, None] & d1_ok[None, :])


@triton.jit
def _dq_block(
    dq0, dq1, q0, q1, do0, do1, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, row_ok, start_n, n_k,
    qk_scale, offs_d0, offs_d1,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, HAS_TAIL: tl.constexpr, EVEN_D0: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < n_k
    d0_ok = offs_d0 < HEAD_DIM
    kt0 = _load_rows_t(k_base, offs_n, stride_kn, offs_d0, key_ok, d0_ok, MASKED, EVEN_D0)
    vt0 = _load_rows_t(v_base, offs_n, stride_vn, offs_d0, key_ok, d0_ok, MASKED, EVEN_D0)
    s = tl.dot(q0, kt0, input_precision=PRECISION)
    dp = tl.dot(do0, vt0, input_precision=PRECISION)
    if HAS_TAIL:
        d1_ok = (D0 + offs_d1) < HEAD_DIM
        kt1 = _load_rows_t(k_base + D0, offs_n, stride_kn, offs_d1, key_ok, d1_ok, True, False)
        vt1 = _load_rows_t(v_base + D0, offs_n, stride_vn, offs_d1, key_ok, d1_ok, True, False)
        s += tl.dot(q1, kt1, input_precision=PRECISION)
        dp += tl.dot(do1, vt1, input_precision=PRECISION)
    logit = s * qk_scale - lse[:, None]
    if MASKED:
        keep = key_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        logit = tl.where(keep, logit, float("-inf"))
    p = tl.math.exp2(logit)
    ds = (p * (dp - delta[:, None])).to(kt0.dtype)
    dq0 += tl.dot(ds, tl.trans(kt0), input_precision=PRECISION)
    if HAS_TAIL:
        dq1 += tl.dot(ds, tl.trans(kt1), input_precision=PRECISION)
    return dq0, dq1


@triton.jit
def attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, KV_LEN,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_dqb, stride_dqh, stride_dqn,
    H, N_Q, N_K, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LEN: tl.constexpr, ALIGNED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(N_Q, BLOCK_M), B*H)."""
    HAS_TAIL: tl.constexpr = D1 > 0
    EVEN_D0: tl.constexpr = D0 <= HEAD_DIM
    num_m = tl.cdiv(N_Q, BLOCK_M)
    pid_m = (num_m - 1 - tl.program_id(0)) if CAUSAL else tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_ptr = _head_base(Q, b, h, stride_qb, stride_qh, ALIGNED)
    k_ptr = _head_base(K, b, h, stride_kb, stride_kh, ALIGNED)
    v_ptr = _head_base(V, b, h, stride_vb, stride_vh, ALIGNED)
    do_ptr = _head_base(DO, b, h, stride_dob, stride_doh, ALIGNED)
    dq_ptr = _head_base(DQ, b, h, stride_dqb, stride_dqh, ALIGNED)
    stride_qn = _row_stride(stride_qn, ALIGNED)
    stride_kn = _row_stride(stride_kn, ALIGNED)
    stride_vn = _row_stride(stride_vn, ALIGNED)
    stride_don = _row_stride(stride_don, ALIGNED)
    stride_dqn = _row_stride(stride_dqn, ALIGNED)
    n_k = _key_len(KV_LEN, b, N_K, HAS_KV_LEN)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, D0)
    offs_d1 = tl.arange(0, D1 if HAS_TAIL else 16)
    row_ok = offs_m < N_Q
    d0_ok = offs_d0 < HEAD_DIM
    q0 = _load_rows(q_ptr, offs_m, stride_qn, offs_d0, row_ok, d0_ok, True, False)
    do0 = _load_rows(do_ptr, offs_m, stride_don, offs_d0, row_ok, d0_ok, True, False)
    q1 = q0
    do1 = do0
    if HAS_TAIL:
        d1_ok = (D0 + offs_d1) < HEAD_DIM
        q1 = _load_rows(q_ptr + D0, offs_m, stride_qn, offs_d1, row_ok, d1_ok, True, False)
        do1 = _load_rows(do_ptr + D0, offs_m, stride_don, offs_d1, row_ok, d1_ok, True, False)
    lse = tl.load(LSE + bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)
    dq0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    dq1 = tl.zeros([BLOCK_M, D1 if HAS_TAIL else 16], dtype=tl.float32)
    full_end, hi = _key_stages(start_m, n_k, BLOCK_M, BLOCK_N, CAUSAL)
    for start_n in range(0, full_end, BLOCK_N):
        dq0, dq1 = _dq_block(
            dq0, dq1, q0, q1, do0, do1, lse, delta, k_ptr, v_ptr, stride_kn, stride_vn, offs_m, row_ok,
            start_n, n_k, qk_scale, offs_d0, offs_d1, HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_N, False, CAUSAL,
            PRECISION,
        )
    for start_n in range(full_end, hi, BLOCK_N):
        dq0, dq1 = _dq_block(
            dq0, dq1, q0, q1, do0, do1, lse, delta, k_ptr, v_ptr, stride_kn, stride_vn, offs_m, row_ok,
            start_n, n_k, qk_scale, offs_d0, offs_d1, HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_N, True, CAUSAL,
            PRECISION,
        )
    tl.store(_tile_ptrs(dq_ptr, offs_m, stride_dqn, offs_d0), (dq0 * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & d0_ok[None, :])
    if HAS_TAIL:
        tl.store(_tile_ptrs(dq_ptr + D0, offs_m, stride_dqn, offs_d1), (dq1 * sm_scale).to(DQ.dtype.element_ty),
                 mask=row_ok[:, None] & d1_ok[None, :])
