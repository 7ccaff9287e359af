"""Static key/value cache for GPT sampling: one preallocated buffer per layer, sized with the *KV* heads.

Sized with ``n_kv_head`` (LlamaGen sizes it with ``n_head``, so its grouped-query models fail to sample).
Shapes never change during sampling (positions are tensors, the mask is a fixed [B, L, L] table), so a decode
step can be captured by ``torch.compile``. The cache is an explicit object, not module state: two samplers can
share one model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toklip.core.errors import InputError


class StaticKVCache:
    """Keys and values ``[B, n_kv_head, L, head_dim]`` per layer, and the boolean attention mask ``[B, L, L]``
    (query position x key position). ``cond_mask`` ``[B, cond_len]`` hides padded condition tokens (LlamaGen t2i
    left-pads captions); every position still sees itself, so no softmax row is empty."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        max_len: int,
        n_kv_head: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        cond_mask: Tensor | None = None,
    ) -> None:
        if batch_size < 1 or max_len < 1:
            raise InputError(f"a KV cache needs batch_size >= 1 and max_len >= 1, got {batch_size} and {max_len}")
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len = max_len
        self.mask = attention_mask(batch_size, max_len, cond_mask, device=device)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, positions: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``keys``/``values`` ``[B, n_kv_head, S, head_dim]`` at ``positions`` [S]; return the full buffers."""
        self.keys[layer].index_copy_(2, positions, keys)
        self.values[layer].index_copy_(2, positions, values)
        return self.keys[layer], self.values[layer]

    def mask_for(self, positions: Tensor) -> Tensor:
        """The rows of the mask for these query positions, ``[B, 1, S, L]`` (broadcast over heads)."""
        return self.mask.index_select(1, positions)[:, None]


def attention_mask(batch_size: int, length: int, cond_mask: Tensor | None = None, *,
                   device: torch.device | str | None = None) -> Tensor:
    """Causal ``[B, L, L]`` boolean mask; with ``cond_mask`` ``[B, T]`` padded condition keys are hidden."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = causal.expand(batch_size, length, length)
    if cond_mask is None:
        return mask
    cond_len = cond_mask.shape[1]
    keep = torch.ones(batch_size, length, dtype=torch.bool, device=device)
    keep[:, :cond_len] = cond_mask.to(device=device, dtype=torch.bool)
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return (mask & keep[:, None, :]) | eye
