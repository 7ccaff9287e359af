"""Pure-PyTorch lookup + MLP: the oracle for the Triton kernels and their CPU fallback.

``lookup_mlp_reference`` is the per-token computation TokLIP runs (gather code vectors, Linear -> exact
GELU -> Linear). ``codebook_mlp_reference`` is the codebook-space form: the MLP over the V codebook rows,
then a gather. Autograd turns the gather's backward into a per-code sum of dOut followed by the MLP
backward over the codebook rows, which is exact because GELU'(pre) depends only on the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from toklip import InputError


def check_lookup_inputs(indices: Tensor, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                        pos_embed: Tensor | None = None) -> None:
    """InputError for shapes, dtypes or index values the op cannot take. Syncs once (a min/max reduction)."""
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"indices must be an integer tensor, got {indices.dtype}")
    if table.dim() != 2:
        raise InputError(f"the code table must be [V, c], got shape {tuple(table.shape)}")
    vocab, code_dim = table.shape
    hidden, width = w1.shape[0], w2.shape[0]
    if w1.shape != (hidden, code_dim) or b1.shape != (hidden,) or w2.shape != (width, hidden) or b2.shape != (width,):
        raise InputError(
            f"MLP weights do not fit a [{vocab}, {code_dim}] code table: fc1 {tuple(w1.shape)} + {tuple(b1.shape)}, "
            f"fc2 {tuple(w2.shape)} + {tuple(b2.shape)}; expected fc1 [hidden, {code_dim}], fc2 [width, hidden]"
        )
    if pos_embed is not None:
        n_tok = indices.shape[-1] if indices.dim() else 1
        if pos_embed.reshape(-1, pos_embed.shape[-1]).shape != (n_tok, width):
            raise InputError(f"pos_embed must be [N, {width}] (or [1, N, {width}]) for N = {n_tok} tokens per row, "
                             f"got {tuple(pos_embed.shape)}")
    if indices.numel():
        lo, hi = (int(x) for x in torch.aminmax(indices.reshape(-1)))
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            count = int(((indices < 0) | (indices >= vocab)).sum())
            raise InputError(
                f"code index {bad} is out of range for a codebook of {vocab} codes ({count} of {indices.numel()} "
                f"indices are outside [0, {vocab - 1}]); indices must come from the model's own VQ tokenizer"
            )


def _mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def _pos(pos_embed: Tensor | None, width: int) -> Tensor | None:
    return None if pos_embed is None else pos_embed.reshape(-1, width)


def lookup_mlp_reference(indices: Tensor, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                         pos_embed: Tensor | None = None, *, check: bool = True) -> Tensor:
    """indices [..., N] -> MLP(table[indices]) (+ pos_embed [N, D]) of shape [..., N, D], per token."""
    if check:
        check_lookup_inputs(indices, table, w1, b1, w2, b2, pos_embed)
    out = _mlp(table[indices.long()].to(w1.dtype), w1, b1, w2, b2)
    pos = _pos(pos_embed, w2.shape[0])
    return out if pos is None else out + pos.to(out.dtype)


def codebook_table_reference(table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The [V, D] table MLP(table): every code's token embedding."""
    return _mlp(table.to(w1.dtype), w1, b1, w2, b2)


def codebook_mlp_reference(indices: Tensor, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                           pos_embed: Tensor | None = None, *, check: bool = True) -> Tensor:
    """Same result as :func:`lookup_mlp_reference`, computed over the V codebook rows and then gathered."""
    if check:
        check_lookup_inputs(indices, table, w1, b1, w2, b2, pos_embed)
    out = F.embedding(indices.long(), codebook_table_reference(table, w1, b1, w2, b2))
    pos = _pos(pos_embed, w2.shape[0])
    return out if pos is None else out + pos.to(out.dtype)
