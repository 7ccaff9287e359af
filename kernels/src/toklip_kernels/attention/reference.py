"""Pure-PyTorch attention: the oracle for the Triton kernels and their CPU fallback.

Same semantics as the kernels: q, k, v [B, H, N, d]; ``causal`` is top-left aligned (query i sees keys
j <= i); ``kv_lens`` [B] masks keys j >= kv_lens[b]; a row that sees no key gives 0 and logsumexp -inf.
Computed in float32 (or float64 if the inputs are float64) and returned in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_mask(n_q: int, n_k: int, *, causal: bool, kv_lens: Tensor | None, batch: int,
                   device: torch.device) -> Tensor | None:
    """Boolean keep-mask broadcastable to [B, H, n_q, n_k], or None when nothing is masked."""
    keep = None
    if causal:
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()[None, None]
    if kv_lens is not None:
        keys = torch.arange(n_k, device=device)[None, :] < kv_lens.to(device)[:, None]  # [B, n_k]
        kv = keys[:, None, None, :]
        keep = kv if keep is None else keep & kv
    if keep is not None and keep.shape[0] != batch:
        keep = keep.expand(batch, *keep.shape[1:])
    return keep


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
    kv_lens: Tensor | None = None, return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v with autograd; optionally also the logsumexp [B, H, n_q] (float32)."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale
    keep = attention_mask(q.shape[-2], k.shape[-2], causal=causal, kv_lens=kv_lens, batch=q.shape[0],
                          device=q.device)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf for rows with no key
    finite = torch.isfinite(lse)
    weights = torch.exp(scores - torch.where(finite, lse, torch.zeros_like(lse))[..., None])
    weights = torch.where(finite[..., None], weights, torch.zeros_like(weights))
    out = (weights @ v.to(compute)).to(q.dtype)
    if return_lse:
        return out, lse.float()
    return out
