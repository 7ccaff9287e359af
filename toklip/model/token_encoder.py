"""The token encoder: ViT blocks initialised from a semantic encoder's vision tower, fed VQ tokens.

It is a timm ``VisionTransformer`` without its patch embedding: the projected code vectors replace the
patches. Blocks, norms and the MAP pool are timm's own modules; attention goes through a toklip backend.
A class token, when the encoder has one (CLIP/DFN), is appended *last* so that, under the causal mask, it
still sees every image token (TokLIP's CLIP-style path).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from toklip.model.attention import BackendAttention
from toklip.core.errors import ConfigError

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


def token_encoder_from_timm(vit: nn.Module, grid: tuple[int, int], *, pool: Pool) -> TokenEncoder:
    """Take a timm VisionTransformer's weights (pos-embed, blocks, norms, pool, head) into a TokenEncoder.

    Position embeddings are resized when the VQ grid differs from the encoder's patch grid; a class token's
    position row moves from first to last."""
    src_grid = tuple(vit.patch_embed.grid_size)
    has_cls = getattr(vit, "cls_token", None) is not None
    if getattr(vit, "reg_token", None) is not None:
        raise ConfigError("encoders with register tokens are not supported by the token encoder")
    attn_pool = getattr(vit, "attn_pool", None) if pool == "map" else None
    head = vit.head if isinstance(vit.head, nn.Linear) else None
    enc = TokenEncoder(
        grid=grid,
        width=vit.embed_dim,
        embed_dim=head.out_features if head is not None else vit.embed_dim,
        blocks=vit.blocks,
        norm=vit.norm,
        pool=pool,
        attn_pool=attn_pool,
        norm_pre=vit.norm_pre,
        cls_token=has_cls,
        head=head,
        embed_norm=getattr(vit.patch_embed, "norm", None),  # e.g. AIMv2 normalises patch embeddings
        fc_norm=vit.fc_norm,
    )
    device = vit.pos_embed.device
    enc.pos_embed = nn.Parameter(torch.zeros_like(enc.pos_embed, device=device))
    if device.type == "meta":
        if has_cls:
            enc.cls_token = nn.Parameter(torch.zeros_like(vit.cls_token))
        return enc
    with torch.no_grad():
        pos = vit.pos_embed.detach()
        prefix = pos[:, :1] if has_cls and not getattr(vit, "no_embed_class", False) else None
        patches = pos[:, 1:] if prefix is not None else pos
        if patches.shape[1] != src_grid[0] * src_grid[1]:
            raise ConfigError(f"cannot read a {src_grid} position grid from pos_embed {tuple(pos.shape)}")
        if src_grid != tuple(grid):
            _check_resizable(src_grid, grid)
        patches = resize_pos_embed(patches, src_grid, grid)
        rows = [patches] + ([prefix] if prefix is not None else [])
        if has_cls and prefix is None:
            rows.append(torch.zeros_like(patches[:, :1]))
        enc.pos_embed.copy_(torch.cat(rows, dim=1))
        if has_cls:
            enc.cls_token = nn.Parameter(vit.cls_token.detach().clone())
    return enc


def _check_resizable(src: tuple[int, int], dst: tuple[int, int]) -> None:
    if min(dst) < 1 or min(src) < 1:
        raise ConfigError(f"cannot resize position embeddings from grid {src} to {dst}")
    ratio = max(dst[0] / src[0], dst[1] / src[1], src[0] / dst[0], src[1] / dst[1])
    if ratio > 8 or not math.isfinite(ratio):
        raise ConfigError(
            f"the VQ token grid {dst} is too far from the encoder's patch grid {src} to interpolate position "
            "embeddings sensibly; pick an image_size so that image_size / vq downsample is close to the "
            "encoder's grid"
        )
