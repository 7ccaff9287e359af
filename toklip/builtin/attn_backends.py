"""Attention implementations: ``sdpa`` and ``eager`` always; ``flash_attn`` and ``xformers`` when installed.

All take q, k, v as [B, H, N, d] and return [B, H, N, d]. ``causal`` means query i sees keys <= i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _half(q: Tensor) -> bool:
    return q.dtype in (torch.float16, torch.bfloat16)


class SDPABackend:
    """``torch.nn.functional.scaled_dot_product_attention``; causal uses ``is_causal=True``, never a mask tensor,
    so PyTorch may pick its flash kernel (an explicit float mask rules flash out)."""

    name = "sdpa"

    def supports(self, q: Tensor, *, causal: bool, has_mask: bool) -> str | None:
        return None

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        if attn_mask is not None and causal:
            attn_mask = combine_causal(attn_mask, q.shape[-2], k.shape[-2], q.dtype)
            causal = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=scale)


def combine_causal(attn_mask: Tensor, n_q: int, n_k: int, dtype: torch.dtype) -> Tensor:
    """An additive float mask equal to `attn_mask` with the causal constraint added."""
    causal = torch.ones(n_q, n_k, dtype=torch.bool, device=attn_mask.device).tril()
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal
    return attn_mask.to(dtype).masked_fill(~causal, float("-inf"))


class EagerBackend:
    """softmax(q k^T * scale + mask) v computed in float32: the readable reference.

    The mask is added before the softmax (the official fallback adds it after, which gives NaN), and a row
    whose keys are all masked returns zeros instead of NaN.
    """

    name = "eager"

    def supports(self, q: Tensor, *, causal: bool, has_mask: bool) -> str | None:
        return None

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale
        n_q, n_k = scores.shape[-2:]
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask.float()
        if causal:
            keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        row_max = scores.amax(dim=-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        weights = torch.exp(scores - row_max)
        denom = weights.sum(dim=-1, keepdim=True)
        weights = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
        return (weights @ v.float()).to(q.dtype)


class FlashAttnBackend:
    """Dao-AILab ``flash_attn_func`` (FA2): CUDA, fp16/bf16, head_dim <= 256 and a multiple of 8, no mask."""

    name = "flash_attn"

    def supports(self, q: Tensor, *, causal: bool, has_mask: bool) -> str | None:
        if q.device.type != "cuda":
            return f"needs a CUDA device, got {q.device.type}"
        if not _half(q):
            return f"needs float16 or bfloat16, got {q.dtype}"
        if q.shape[-1] > 256 or q.shape[-1] % 8:
            return f"head_dim must be a multiple of 8 and <= 256, got {q.shape[-1]}"
        if has_mask:
            return "does not take an arbitrary attention mask"
        return None

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        from flash_attn import flash_attn_func

        out = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, softmax_scale=scale
        )
        return out.transpose(1, 2)


class XFormersBackend:
    """xformers ``memory_efficient_attention`` with ``LowerTriangularMask`` for causal: CUDA only."""

    name = "xformers"

    def supports(self, q: Tensor, *, causal: bool, has_mask: bool) -> str | None:
        if q.device.type != "cuda":
            return f"needs a CUDA device, got {q.device.type}"
        if has_mask and causal:
            return "takes either causal or a mask, not both"
        return None

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
        scale: float | None = None,
    ) -> Tensor:
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if causal else attn_mask
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
        )
        return out.transpose(1, 2)
