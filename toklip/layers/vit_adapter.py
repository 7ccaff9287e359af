"""The timm ViT adapter: build a timm VisionTransformer whose attention runs on toklip's backends, and take
its weights into a :class:`~toklip.layers.token_encoder.TokenEncoder` (what every semantic encoder does)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from toklip.core.errors import ConfigError
from toklip.layers.attention import BackendAttention
from toklip.layers.token_encoder import Pool, TokenEncoder, resize_pos_embed

__all__ = ["timm_vit", "token_encoder_from_timm"]


def timm_vit(timm_name: str, *, img_size: int, pool: str, overrides: Mapping[str, Any]) -> nn.Module:
    """A timm VisionTransformer with toklip's backend-routed attention and no classifier."""
    import timm

    kwargs = {"pretrained": False, "num_classes": 0, "img_size": img_size, "attn_layer": BackendAttention}
    if pool:
        kwargs["global_pool"] = pool
    kwargs.update(overrides)
    return timm.create_model(timm_name, **kwargs)


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
