"""The token encoder: ViT blocks initialised from a semantic encoder's vision tower, fed VQ tokens.

It is a timm ``VisionTransformer`` without its patch embedding: the projected code vectors replace the
patches. Blocks, norms and the MAP pool are timm's own modules; attention goes through a toklip backend.
A class token, when the encoder has one (CLIP/DFN), is appended *last* so that, under the causal mask, it
still sees every image token (TokLIP's CLIP-style path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toklip.layers.attention import BackendAttention
from toklip.core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from toklip.layers.streaming import TokenStream

Pool = Literal["map", "last", "avg"]


def resize_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic resize of a [1, h*w, D] grid of position embeddings (timm's `resample_abs_pos_embed`)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=0)


class TokenEncoder(nn.Module):
    """[embed_norm] + pos-embed + [norm_pre] + blocks + norm; then pool + [fc_norm] + [head].

    ``forward_features`` -> [B, N, D]; ``pool`` -> [B, E]. The optional parts mirror a timm ViT's own
    (``patch_embed.norm``, ``norm_pre``, ``fc_norm``, ``head``) so any ViT-family encoder maps onto it."""

    def __init__(
        self,
        *,
        grid: tuple[int, int],
        width: int,
        embed_dim: int,
        blocks: nn.Sequential,
        norm: nn.Module,
        pool: Pool = "map",
        attn_pool: nn.Module | None = None,
        norm_pre: nn.Module | None = None,
        cls_token: bool = False,
        head: nn.Module | None = None,
        embed_norm: nn.Module | None = None,
        fc_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if pool == "map" and attn_pool is None:
            raise ConfigError("pool='map' needs an attention-pool module")
        self.grid = tuple(grid)
        self.num_tokens = grid[0] * grid[1]
        self.width = width
        self.embed_dim = embed_dim
        self.pool_type = pool
        n_pos = self.num_tokens + (1 if cls_token else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_token else None
        self.embed_norm = embed_norm if embed_norm is not None else nn.Identity()
        self.norm_pre = norm_pre if norm_pre is not None else nn.Identity()
        self.blocks = blocks
        self.norm = norm
        self.attn_pool = attn_pool
        self.fc_norm = fc_norm if fc_norm is not None else nn.Identity()
        self.head = head if head is not None else nn.Identity()
        self.grad_checkpointing = False

    # --- attention backend plumbing
    def set_attn_backend(self, name: str) -> None:
        for module in self.modules():
            if isinstance(module, BackendAttention):
                module.backend = name

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # --- forward
    def forward_features(self, tokens: Tensor, *, causal: bool) -> Tensor:
        """tokens [B, N, D] -> features [B, N(+1 if class token), D] after the final norm.

        Under gradient checkpointing the causal flag is passed to every block explicitly, so recomputation
        keeps the mask (the official code drops it there)."""
        x = self.embed_norm(tokens)
        if self.cls_token is not None:
            x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
        x = self.norm_pre(x + self.pos_embed.to(x.dtype))
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, None, causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=None, is_causal=causal)
        return self.norm(x)

    def stream(self, batch_size: int, *, layer: int | None = None, max_len: int | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TokenStream:
        """A KV-cached causal stream: ``step(tokens [B, k, D])`` -> the causal features of those k tokens, each
        token run through each block once (see :mod:`toklip.layers.streaming`)."""
        from toklip.layers.streaming import TokenStream

        return TokenStream(self, batch_size, layer=layer, max_len=max_len, device=device, dtype=dtype)

    def token_features(self, features: Tensor) -> Tensor:
        """The per-image-token part of `forward_features` (drops an appended class token)."""
        return features[:, : self.num_tokens]

    def pool(self, features: Tensor) -> Tensor:
        if self.pool_type == "map":
            assert self.attn_pool is not None
            pooled = self.attn_pool(features)
        elif self.pool_type == "last":
            pooled = features[:, -1]
        else:
            pooled = features[:, : self.num_tokens].mean(dim=1)
        return self.head(self.fc_norm(pooled))
