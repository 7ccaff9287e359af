"""KV-cached causal features of the token encoder, a chunk of tokens at a time.

An autoregressive generator needs s_i, the causal feature of token x_i given x_<=i, at every sampling step.
Re-encoding each prefix costs N(N+1)/2 token passes per image; a stream keeps every block's keys and values,
so each token goes through each block once. Under the causal mask a token never sees later tokens (nor the
class token, which the encoder appends last), so the stream's features equal ``forward_features(...,
causal=True)`` row for row at every prefix length.

The block step calls the block's own modules (timm ``Block``: norm1, attn, ls1, drop_path1, norm2, mlp, ls2,
drop_path2; ``BackendAttention`` / timm ``Attention``: qkv, q_norm, k_norm, norm, gate, proj), so every timm
ViT the encoders build streams with its own weights and attention backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError, InputError
from toklip.layers.attention import backend_instance, requested_backend, run_attention

if TYPE_CHECKING:  # pragma: no cover
    from toklip.layers.token_encoder import TokenEncoder

__all__ = ["IndexStream", "KVCache", "TokenStream", "attend_chunk", "check_streamable", "hidden_state_index"]

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "q_norm", "k_norm", "proj", "num_heads", "head_dim", "scale")


def hidden_state_index(layer: int | None, depth: int) -> int | None:
    """None for the final normed features (``layer`` None or -1), else the hidden-state index 0..depth counted as
    Hugging Face's ``hidden_states`` (0: block input, k: output of block k, -2: output of the penultimate block)."""
    if layer is None:
        return None
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"layer must be an int or None, got {layer!r}")
    if layer == -1:
        return None
    index = depth + 1 + layer if layer < 0 else layer
    if not 0 <= index <= depth:
        raise ConfigError(f"layer={layer} is out of range for a {depth}-block token encoder: "
                          f"use None or -1 (final features), 0..{depth} or -{depth + 1}..-2")
    return index


def check_streamable(blocks: Sequence[nn.Module]) -> None:
    """Refuse blocks the step cannot reproduce: it re-runs timm's pre-norm ``Block`` from the block's parts."""
    for i, block in enumerate(blocks):
        missing = [p for p in _BLOCK_PARTS if not hasattr(block, p)]
        attn = getattr(block, "attn", None)
        if attn is not None:
            missing += [f"attn.{p}" for p in _ATTN_PARTS if not hasattr(attn, p)]
        if missing:
            raise ConfigError(
                f"block {i} ({type(block).__name__}) cannot be streamed: it has no {', '.join(missing)}; streaming "
                "needs timm's pre-norm Block with a fused-qkv Attention (use forward_features instead)"
            )


class KVCache:
    """Preallocated keys and values ``[B, heads, max_len, head_dim]`` per block: static shapes written in place,
    so a step never concatenates (or copies) the prefix's keys."""

    def __init__(self, heads: Sequence[tuple[int, int]], batch_size: int, max_len: int, *,
                 device: torch.device, dtype: torch.dtype) -> None:
        shapes = [(batch_size, h, max_len, d) for h, d in heads]
        self.keys = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
        self.values = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
        self.max_len = max_len

    def append(self, block: int, start: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``keys``/``values`` ``[B, H, n, d]`` at positions start..start+n-1; return positions 0..start+n-1."""
        end = start + keys.shape[2]
        self.keys[block][:, :, start:end] = keys
        self.values[block][:, :, start:end] = values
        return self.keys[block][:, :, :end], self.values[block][:, :, :end]


def attend_chunk(q: Tensor, k: Tensor, v: Tensor, *, start: int, scale: float | None, backend: str) -> Tensor:
    """Queries at positions start..start+n-1 against keys 0..start+n-1, causally (bottom-right aligned).

    Backends disagree on ``causal`` when n_q < n_k (sdpa and eager align it top-left, flash_attn bottom-right),
    so it is passed only where n_q == n_k. One query needs no mask; a chunk after a prefix gets an explicit
    boolean mask, or one call per query on a backend that takes no mask (flash_attn, triton)."""
    n = q.shape[-2]
    if n == 1 or start == 0:
        return run_attention(q, k, v, causal=n > 1, scale=scale, backend=backend)
    name = requested_backend(backend)
    if name == "auto" or backend_instance(name).supports(q, causal=False, has_mask=True) is None:
        mask = torch.ones(n, start + n, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return run_attention(q, k, v, causal=False, attn_mask=mask, scale=scale, backend=backend)
    rows = [run_attention(q[:, :, j:j + 1], k[:, :, :start + j + 1], v[:, :, :start + j + 1], causal=False,
                          scale=scale, backend=backend) for j in range(n)]
    return torch.cat(rows, dim=2)


class TokenStream:
    """Causal token-encoder features of projected tokens, fed a chunk at a time: ``step(tokens [B, k, D])`` ->
    ``[B, k, D]``. Token i uses position-embedding row i; blocks after the chosen ``layer`` are not run."""

    def __init__(self, encoder: TokenEncoder, batch_size: int, *, layer: int | None = None,
                 max_len: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.encoder = encoder
        self._index = hidden_state_index(layer, len(encoder.blocks))
        self.blocks = list(encoder.blocks)[: self._index]
        check_streamable(self.blocks)
        n = encoder.num_tokens
        max_len = n if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= n:
            raise InputError(f"max_len must be an int in 1..{n} (one position embedding per grid token), "
                             f"got {max_len!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.device = torch.device(device) if device is not None else encoder.pos_embed.device
        self.dtype = dtype or encoder.pos_embed.dtype
        if self.device.type == "meta":
            raise ConfigError("cannot stream a model on the meta device (it has no weights); load or build it "
                              "on a real device first")
        self.batch_size, self.max_len = batch_size, max_len
        heads = [(int(b.attn.num_heads), int(b.attn.head_dim)) for b in self.blocks]
        self.cache = KVCache(heads, batch_size, max_len, device=self.device, dtype=self.dtype)
        self._position = 0

    @property
    def position(self) -> int:
        """Tokens consumed so far (the next token's position)."""
        return self._position

    def reset(self) -> None:
        """Start a new sequence; stale cache entries are never read (attention stops at the position)."""
        self._position = 0

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """tokens [B, k, D] (projector output) -> features [B, k, D] of those k tokens given all before them.

        No autograd: the cache is overwritten in place, and sampling needs no gradients."""
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            raise InputError(f"tokens must be a tensor [B, k, D], got {getattr(tokens, 'shape', type(tokens))}")
        b, n, d = tokens.shape
        if b != self.batch_size or d != self.encoder.width or n < 1:
            raise InputError(f"tokens must be [{self.batch_size}, k >= 1, {self.encoder.width}] for this stream, "
                             f"got {tuple(tokens.shape)}")
        start = self._position
        if start + n > self.max_len:
            raise InputError(f"a step of {n} token(s) at position {start} passes max_len={self.max_len}; "
                             "call reset() for a new sequence or make the stream with a larger max_len")
        enc = self.encoder
        x = enc.embed_norm(tokens.to(self.device, self.dtype))
        x = enc.norm_pre(x + enc.pos_embed[:, start:start + n].to(x.dtype))
        for i, block in enumerate(self.blocks):
            x = x + block.drop_path1(block.ls1(self._attention(i, block.attn, block.norm1(x), start)))
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        self._position = start + n
        return enc.norm(x) if self._index is None else x

    def _attention(self, i: int, attn: nn.Module, x: Tensor, start: int) -> Tensor:
        """``BackendAttention.forward`` for the new rows, with keys and values from the cache."""
        b, n, _ = x.shape
        heads, head_dim = int(attn.num_heads), int(attn.head_dim)
        gate = getattr(attn, "gate", None)
        qkv = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        keys, values = self.cache.append(i, start, k, v)
        out = attend_chunk(q, keys, values, start=start, scale=attn.scale, backend=getattr(attn, "backend", "auto"))
        out = out.transpose(1, 2).reshape(b, n, heads * head_dim)
        out = getattr(attn, "norm", nn.Identity())(out)
        if gate is not None:
            out = out * gate(x).sigmoid()
        out = attn.proj(out)
        return getattr(attn, "proj_drop", nn.Identity())(out)


class IndexStream:
    """TokLIP's causal features from VQ indices, a chunk at a time: indices -> code vectors -> projector ->
    :class:`TokenStream`. ``step(indices [B] or [B, k])`` -> ``[B, k, D]``."""

    def __init__(self, vq: Any, projector: Callable[..., Tensor], tokens: TokenStream) -> None:
        self.vq, self.projector, self.tokens = vq, projector, tokens

    @property
    def position(self) -> int:
        return self.tokens.position

    @property
    def batch_size(self) -> int:
        return self.tokens.batch_size

    @property
    def max_len(self) -> int:
        return self.tokens.max_len

    def reset(self) -> None:
        self.tokens.reset()

    @torch.no_grad()
    def step(self, indices: Tensor) -> Tensor:
        """indices LongTensor [B] or [B, k] -> features [B, k, D] (``tokenize_indices(...).features`` rows)."""
        idx = self._check(indices)
        codes = self.vq.indices_to_codes(idx)
        tokens = self.projector(codes.to(self.tokens.dtype), idx, self.vq.code_table)
        return self.tokens.step(tokens.to(self.tokens.dtype))

    def _check(self, indices: object) -> Tensor:
        if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.is_complex() \
                or indices.dtype == torch.bool:
            raise InputError(f"indices must be an integer tensor [B] or [B, k], got "
                             f"{getattr(indices, 'dtype', type(indices).__name__)}")
        idx = indices[:, None] if indices.dim() == 1 else indices
        if idx.dim() != 2 or idx.shape[0] != self.batch_size or idx.shape[1] < 1:
            raise InputError(f"indices must be [{self.batch_size}] or [{self.batch_size}, k >= 1] for this stream, "
                             f"got {tuple(indices.shape)}")
        lo, hi, vocab = int(idx.min()), int(idx.max()), int(self.vq.vocab_size)
        if lo < 0 or hi >= vocab:
            raise InputError(f"indices must lie in [0, {vocab - 1}] (vocabulary of {vocab} codes), got [{lo}, {hi}]")
        return idx.long().to(self.tokens.device)
