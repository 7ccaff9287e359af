"""Flash-attention forward in Triton: online softmax over key blocks, logsumexp saved for the backward.

Head dims that are not a power of two run as a main part plus a tail (72 = 64 + 8 padded to 16, i.e. an
80-wide tile with two ``tl.dot`` calls per product) instead of one 128-wide tile. Any sequence length works:
the last query/key blocks are masked. ``causal`` is top-left aligned (query i sees keys j <= i), the same as
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``. Optional per-batch key lengths mask
keys j >= kv_len[b]; a row that sees no key returns 0 with logsumexp -inf (never NaN).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _tile_ptrs(base, offs_row, stride_row, offs_col):
    return base + offs_row[:, None] * stride_row + offs_col[None, :]


@triton.jit
def _tile_ptrs_t(base, offs_row, stride_row, offs_col):
    """Pointers to the transposed tile: [cols, rows]."""
    return base + offs_col[:, None] + offs_row[None, :] * stride_row


@triton.jit
def _head_base(ptr, b, h, stride_b, stride_h, ALIGNED: tl.constexpr):
    """Pointer to head (b, h). ALIGNED promises an 8-element aligned start (checked by the host)."""
    off = b * stride_b + h * stride_h
    if ALIGNED:
        off = tl.multiple_of(off, 8)
    return ptr + off


@triton.jit
def _row_stride(stride, ALIGNED: tl.constexpr):
    """ALIGNED: rows start 16-byte aligned (d = 72: 144-byte rows, a stride Triton does not specialise).
    (s // 8) * 8 == s says so to the compiler, which then vectorises the loads; multiple_of cannot, on an argument."""
    if ALIGNED:
        stride = (stride // 8) * 8
    return stride


@triton.jit
def _key_len(KV_LEN, b, N_K, HAS_KV_LEN: tl.constexpr):
    """Keys of batch b that exist: N_K, or min(N_K, kv_len[b])."""
    n_k = N_K
    if HAS_KV_LEN:
        n_k = tl.minimum(tl.load(KV_LEN + b).to(tl.int32), N_K)
    return n_k


@triton.jit
def _key_stages(start_m, n_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """For the query block at start_m: (full_end, hi). Key blocks in [0, full_end) need no mask (in bounds and,
    causal, at or below every row of the block); [full_end, hi) go through the masked path."""
    if CAUSAL:
        hi = tl.minimum(n_k, start_m + BLOCK_M)
        full_end = (tl.minimum(start_m + 1, n_k) // BLOCK_N) * BLOCK_N
    else:
        hi = n_k
        full_end = (n_k // BLOCK_N) * BLOCK_N
    return full_end, hi


@triton.jit
def _fwd_block(
    acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, stride_kn, stride_vn, offs_m, start_n, n_k, qk_scale,
    offs_d0, offs_d1, HEAD_DIM: tl.constexpr, D0: tl.constexpr, HAS_TAIL: tl.constexpr, EVEN_D0: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    """One key block of the online softmax. MASKED blocks apply key bounds (and the causal mask)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < n_k
    d0_ok = offs_d0 < HEAD_DIM
    if MASKED:
        kt0 = tl.load(_tile_ptrs_t(k_base, offs_n, stride_kn, offs_d0), mask=d0_ok[:, None] & key_ok[None, :],
                      other=0.0)
        v0 = tl.load(_tile_ptrs(v_base, offs_n, stride_vn, offs_d0), mask=key_ok[:, None] & d0_ok[None, :], other=0.0)
    elif EVEN_D0:
        kt0 = tl.load(_tile_ptrs_t(k_base, offs_n, stride_kn, offs_d0))
        v0 = tl.load(_tile_ptrs(v_base, offs_n, stride_vn, offs_d0))
    else:
        kt0 = tl.load(_tile_ptrs_t(k_base, offs_n, stride_kn, offs_d0), mask=d0_ok[:, None], other=0.0)
        v0 = tl.load(_tile_ptrs(v_base, offs_n, stride_vn, offs_d0), mask=d0_ok[None, :], other=0.0)
    s = tl.dot(q0, kt0, input_precision=PRECISION)
    if HAS_TAIL:
        d1_ok = (D0 + offs_d1) < HEAD_DIM
        if MASKED:
            kt1 = tl.load(_tile_ptrs_t(k_base + D0, offs_n, stride_kn, offs_d1), mask=d1_ok[:, None] & key_ok[None, :],
                          other=0.0)
            v1 = tl.load(_tile_ptrs(v_base + D0, offs_n, stride_vn, offs_d1), mask=key_ok[:, None] & d1_ok[None, :],
                         other=0.0)
        else:
            kt1 = tl.load(_tile_ptrs_t(k_base + D0, offs_n, stride_kn, offs_d1), mask=d1_ok[:, None], other=0.0)
            v1 = tl.load(_tile_ptrs(v_base + D0, offs_n, stride_vn, offs_d1), mask=d1_ok[None, :], other=0.0)
        s += tl.dot(q1, kt1, input_precision=PRECISION)
    s = s * qk_scale
    if MASKED:
        keep = key_ok[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: keep exp2 finite
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(v0.dtype)
    acc0 = acc0 * alpha[:, None] + tl.dot(p, v0, input_precision=PRECISION)
    if HAS_TAIL:
        acc1 = acc1 * alpha[:, None] + tl.dot(p, v1, input_precision=PRECISION)
    return acc0, acc1, l_i, m_new


@triton.jit
def attn_fwd_kernel(
    Q, K, V, O, LSE, KV_LEN,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, N_Q, N_K, qk_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KV_LEN: tl.constexpr, ALIGNED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(N_Q, BLOCK_M), B*H). LSE [B*H, N_Q] float32 in natural-log units."""
    HAS_TAIL: tl.constexpr = D1 > 0
    EVEN_D0: tl.constexpr = D0 <= HEAD_DIM
    num_m = tl.cdiv(N_Q, BLOCK_M)
    # causal: the longest rows first, so the last wave is short
    pid_m = (num_m - 1 - tl.program_id(0)) if CAUSAL else tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_ptr = _head_base(Q, b, h, stride_qb, stride_qh, ALIGNED)
    k_ptr = _head_base(K, b, h, stride_kb, stride_kh, ALIGNED)
    v_ptr = _head_base(V, b, h, stride_vb, stride_vh, ALIGNED)
    o_ptr = _head_base(O, b, h, stride_ob, stride_oh, ALIGNED)
    stride_qn = _row_stride(stride_qn, ALIGNED)
    stride_kn = _row_stride(stride_kn, ALIGNED)
    stride_vn = _row_stride(stride_vn, ALIGNED)
    stride_on = _row_stride(stride_on, ALIGNED)
    n_k = _key_len(KV_LEN, b, N_K, HAS_KV_LEN)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, D0)
    offs_d1 = tl.arange(0, D1 if HAS_TAIL else 16)
    row_ok = offs_m < N_Q
    d0_ok = offs_d0 < HEAD_DIM
    q0 = tl.load(_tile_ptrs(q_ptr, offs_m, stride_qn, offs_d0), mask=row_ok[:, None] & d0_ok[None, :], other=0.0)
    q1 = q0
    if HAS_TAIL:
        d1_ok = (D0 + offs_d1) < HEAD_DIM
        q1 = tl.load(_tile_ptrs(q_ptr + D0, offs_m, stride_qn, offs_d1), mask=row_ok[:, None] & d1_ok[None, :],
                     other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, D1 if HAS_TAIL else 16], dtype=tl.float32)

    full_end, hi = _key_stages(start_m, n_k, BLOCK_M, BLOCK_N, CAUSAL)
    for start_n in range(0, full_end, BLOCK_N):
        acc0, acc1, l_i, m_i = _fwd_block(
            acc0, acc1, l_i, m_i, q0, q1, k_ptr, v_ptr, stride_kn, stride_vn, offs_m, start_n, n_k, qk_scale,
            offs_d0, offs_d1, HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_N, False, CAUSAL, PRECISION,
        )
    for start_n in range(full_end, hi, BLOCK_N):
        acc0, acc1, l_i, m_i = _fwd_block(
            acc0, acc1, l_i, m_i, q0, q1, k_ptr, v_ptr, stride_kn, stride_vn, offs_m, start_n, n_k, qk_scale,
            offs_d0, offs_d1, HEAD_DIM, D0, HAS_TAIL, EVEN_D0, BLOCK_N, True, CAUSAL, PRECISION,
        )

    empty = l_i == 0.0
    inv_l = 1.0 / tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_ok)
    out0 = (acc0 * inv_l[:, None]).to(O.dtype.element_ty)
    tl.store(_tile_ptrs(o_ptr, offs_m, stride_on, offs_d0), out0, mask=row_ok[:, None] & d0_ok[None, :])
    if HAS_TAIL:
        out1 = (acc1 * inv_l[:, None]).to(O.dtype.element_ty)
        tl.store(_tile_ptrs(o_ptr + D0, offs_m, stride_on, offs_d1), out1, mask=row_ok[:, None] & d1_ok[None, :])


INTERPRETED: bool = isinstance(attn_fwd_kernel, InterpretedFunction)
