"""LlamaGen's 2-D rotary position embedding, condition positions included.

The first half of each head rotates by the image token's grid row, the second half by its column; the rotation
acts on interleaved pairs ``(x[2j], x[2j+1])``. Condition positions get cos = sin = 0, so their queries and keys
are zero and only their values reach later tokens. That is a LlamaGen quirk, kept because the released weights
were trained with it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_2d_table(grid: int, head_dim: int, base: float = 10000.0, cond_len: int = 1) -> Tensor:
    """(cos, sin) per position and rotated pair: ``[cond_len + grid**2, head_dim // 2, 2]`` float32, on the CPU
    (also when a model is built on the meta device: the table is derived, never loaded)."""
    quarter = head_dim // 4
    steps = torch.arange(0, 2 * quarter, 2, device="cpu").float()
    inv_freq = 1.0 / (base ** (steps / (head_dim // 2)))
    angles = torch.outer(torch.arange(grid, device="cpu").float(), inv_freq)  # [grid, head_dim/4]
    rows = angles[:, None, :].expand(grid, grid, quarter)
    cols = angles[None, :, :].expand(grid, grid, quarter)
    per_cell = torch.cat([rows, cols], dim=-1).reshape(grid * grid, 2 * quarter)
    image = torch.stack([per_cell.cos(), per_cell.sin()], dim=-1)
    return torch.cat([torch.zeros(cond_len, 2 * quarter, 2, device="cpu"), image])


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate ``x`` ``[B, S, H, head_dim]`` by ``table`` ``[S, head_dim // 2, 2]`` (computed in float32)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(-2).type_as(x)
