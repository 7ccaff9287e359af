"""The ``triton`` attention backend for toklip's attention dispatch (``attn_backend="triton"``)."""

from __future__ import annotations

from torch import Tensor

from toklip_kernels import _runtime
from toklip_kernels.attention.function import MAX_HEAD_DIM, flash_attention


class TritonAttentionBackend:
    """Flash attention in Triton: causal and bidirectional, any N, head_dim <= 256 (72 natively as 64 + 16).

    On CPU it runs only under ``TRITON_INTERPRET=1`` (tests) and in float32/float16, so ``attn_backend="auto"``
    never picks it there; arbitrary attention masks are not supported (use ``sdpa``)."""

    name = "triton"

    def supports(self, q: Tensor, *, causal: bool, has_mask: bool) -> str | None:
        if has_mask:
            return "does not take an arbitrary attention mask (causal and bidirectional only)"
        if q.shape[-1] > MAX_HEAD_DIM:
            return f"head_dim must be <= {MAX_HEAD_DIM}, got {q.shape[-1]}"
        return _runtime.reason(q)

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        if attn_mask is not None:
            from toklip import InputError

            raise InputError("the triton attention backend does not take attn_mask; use attn_backend='sdpa'")
        out = flash_attention(q, k, v, causal=causal, scale=scale)
        assert isinstance(out, Tensor)
        return out
