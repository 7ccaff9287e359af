"""Shared input checks for VQ tokenizers, so every tokenizer (builtin or plugin) fails the same clear way."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from toklip.core.errors import InputError
from toklip.core.protocols import VQEncoding

# Images are expected in [-1, 1]; allow a little slack for resampling overshoot.
RANGE_SLACK = 1e-2


def check_images(images: object, *, downsample: int, what: str = "images") -> Tensor:
    """Validate a float image batch [B, 3, H, W] in [-1, 1] with H, W multiples of `downsample`."""
    if not isinstance(images, Tensor):
        raise InputError(
            f"{what} must be a torch.Tensor [B, 3, H, W] in [-1, 1], got {type(images).__name__}; "
            "use model.preprocess(image) for PIL images, paths or arrays"
        )
    if images.dim() != 4:
        hint = " (add a batch dimension: images.unsqueeze(0))" if images.dim() == 3 else ""
        raise InputError(f"{what} must have 4 dimensions [B, 3, H, W], got shape {tuple(images.shape)}{hint}")
    if images.shape[1] != 3:
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
        raise InputError(f"{what} must have 3 channels (RGB) in dim 1, got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise InputError(
            f"{what} must be floating point in [-1, 1], got dtype {images.dtype}; "
            "convert uint8 pixels with images.float() / 127.5 - 1, or use model.preprocess"
        )
    if images.shape[0] == 0:
        raise InputError(f"{what} is an empty batch (shape {tuple(images.shape)})")
    h, w = images.shape[-2:]
    if h % downsample or w % downsample:
        raise InputError(
            f"{what} size {h}x{w} is not a multiple of the VQ downsample factor {downsample}; "
            f"resize or crop to a multiple of {downsample} (model.preprocess does this)"
        )
    if images.device.type != "meta":
        finite = torch.isfinite(images)
        if not bool(finite.all()):
            raise InputError(f"{what} contain NaN or infinite values")
        lo, hi = float(images.amin()), float(images.amax())
        if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
            scale = " (it looks like 0..255 pixels)" if hi > 2 else ""
            raise InputError(
                f"{what} values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]{scale}; "
                "normalise with x / 127.5 - 1 for uint8 pixels, or use model.preprocess"
            )
    return images


def check_indices(indices: object, *, vocab_size: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Validate code indices [B, N] or [B, h, w]; returns [B, h, w] int64."""
    if not isinstance(indices, Tensor):
        raise InputError(f"indices must be a torch.Tensor of int64 [B, N] or [B, h, w], got {type(indices).__name__}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise InputError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    if indices.dim() == 2:
        b, n = indices.shape
        if grid is not None:
            if grid[0] * grid[1] != n:
                raise InputError(
                    f"indices have {n} tokens per image, but this model's grid is {grid[0]}x{grid[1]} = "
                    f"{grid[0] * grid[1]} tokens"
                )
            h, w = grid
        else:
            side = math.isqrt(n)
            if side * side != n:
                raise InputError(
                    f"indices have {n} tokens per image, which is not a square grid; pass [B, h, w] instead"
                )
            h = w = side
        indices = indices.reshape(b, h, w)
    elif indices.dim() == 3:
        if grid is not None and tuple(indices.shape[1:]) != tuple(grid):
            raise InputError(f"indices grid {tuple(indices.shape[1:])} does not match this model's grid {tuple(grid)}")
    else:
        raise InputError(f"indices must have shape [B, N] or [B, h, w], got {tuple(indices.shape)}")
    if indices.numel() and indices.device.type != "meta":
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= vocab_size:
            raise InputError(
                f"indices must lie in [0, {vocab_size - 1}] (vocabulary of {vocab_size} codes), got [{lo}, {hi}]"
            )
    return indices.long()


class VQTokenizerBase(nn.Module):
    """Base for VQ tokenizers: subclasses implement `_encode`, `indices_to_codes` and `_decode_codes`.

    The public methods validate inputs and shapes, so subclasses only do the maths.
    """

    code_dim: int
    vocab_size: int
    downsample: int
    # Above this many code vectors, `code_table()` returns None instead of materialising them.
    max_code_table: int = 1 << 20

    def encode(self, images: Tensor) -> VQEncoding:
        images = check_images(images, downsample=self.downsample)
        return self._encode(images)

    def decode(self, indices: Tensor) -> Tensor:
        indices = check_indices(indices, vocab_size=self.vocab_size)
        codes = self.indices_to_codes(indices)  # [B, h, w, c]
        return self._decode_codes(codes.permute(0, 3, 1, 2).contiguous())

    def code_table(self) -> Tensor | None:
        if self.vocab_size > self.max_code_table:
            return None
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        return self.indices_to_codes(torch.arange(self.vocab_size, device=device))

    # -- for subclasses
    def _encode(self, images: Tensor) -> VQEncoding:
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def _decode_codes(self, codes_bchw: Tensor) -> Tensor:
        raise NotImplementedError
