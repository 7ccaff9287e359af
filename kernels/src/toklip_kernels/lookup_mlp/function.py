"""``lookup_mlp``: indices [B, N] -> MLP(code_table[indices]) [B, N, D], two exact Triton strategies.

- ``per_token``: one fused kernel per token tile (gather + GEMM1 + erf GELU + GEMM2), fused backward kernels
  that recompute the hidden tile. Cost grows with the token count T.
- ``codebook``: the MLP over the V codebook rows once ([V, D] table), then a gather. Backward: sum dOut per
  code, then the MLP backward over the codebook rows. Exact because GELU'(pre) depends only on the code.
  Cost is independent of T, so it wins once T is larger than about V.
- ``reference``: plain PyTorch, per token (TokLIP's own computation).

``auto`` picks ``codebook`` when T >= V (or, without gradients, when T >= V / 4), else ``per_token``; on a
machine where Triton cannot run (CPU without TRITON_INTERPRET=1) the same strategies run in PyTorch.
The codebook itself is frozen: the kernels give no gradient to it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from toklip import ConfigError, InputError
from toklip_kernels import _runtime
from toklip_kernels.lookup_mlp import launch, table_mlp
from toklip_kernels.lookup_mlp.reference import (
    check_lookup_inputs,
    codebook_mlp_reference,
    codebook_table_reference,
    lookup_mlp_reference,
)

Strategy = Literal["auto", "per_token", "codebook", "reference"]
STRATEGIES = ("auto", "per_token", "codebook", "reference")
# auto never builds a codebook table larger than this (bytes of the [V, D] table in the compute dtype)
MAX_AUTO_TABLE_BYTES = 1 << 30


def compute_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype the MLP runs in: autocast's when autocast is on for this device, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


def deterministic_default(deterministic: bool | None) -> bool:
    return torch.are_deterministic_algorithms_enabled() if deterministic is None else bool(deterministic)


def choose_strategy(strategy: str, *, n_tokens: int, vocab: int, width: int, itemsize: int, needs_grad: bool,
                    table_cached: bool = False) -> str:
    """Resolve ``auto`` to ``per_token`` or ``codebook`` (see the module docstring for the rule)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown lookup-MLP strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    if vocab * width * itemsize > MAX_AUTO_TABLE_BYTES:
        return "per_token"
    if needs_grad:
        return "codebook" if n_tokens >= vocab else "per_token"
    return "codebook" if table_cached or 4 * n_tokens >= vocab else "per_token"


def _prep(t: Tensor, dtype: torch.dtype) -> Tensor:
    """In the compute dtype with a unit last stride (the kernels take row strides, so no other copy is made)."""
    t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


def _flat(indices: Tensor) -> Tensor:
    return indices.reshape(-1).to(torch.int64).contiguous()


def _pos2d(pos_embed: Tensor | None, width: int) -> Tensor | None:
    if pos_embed is None:
        return None
    pos = pos_embed.reshape(-1, width)
    return pos if pos.stride(-1) == 1 else pos.contiguous()


class _PerTokenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, table, w1, b1, w2, b2, pos, dtype):  # type: ignore[no-untyped-def, override]
        cast = [_prep(t, dtype) for t in (table, w1, b1, w2, b2)]
        out = launch.mlp_forward(idx, *cast, pos=_pos2d(pos, w2.shape[0]), out_dtype=dtype)
        ctx.save_for_backward(idx, *cast)
        ctx.param_dtypes = [t.dtype for t in (w1, b1, w2, b2)]
        ctx.pos_info = None if pos is None else (pos.shape, pos.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[no-untyped-def, override]
        idx, table, w1, b1, w2, _b2 = ctx.saved_tensors
        dout = dout.to(w1.dtype)
        grads = launch.mlp_backward(idx, table, w1, b1, w2, dout)
        return (None, None, *_param_grads(ctx, grads), _pos_grad(ctx, dout), None)


class _CodebookFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, table, w1, b1, w2, b2, pos, dtype, deterministic, impl):  # type: ignore[override]
        cast = [_prep(t, dtype) for t in (table, w1, b1, w2, b2)]
        tab = table_mlp.forward(*cast, impl=impl)
        out = launch.gather(idx, tab, _pos2d(pos, w2.shape[0]), out_dtype=dtype)
        ctx.save_for_backward(idx, *cast)
        ctx.param_dtypes = [t.dtype for t in (w1, b1, w2, b2)]
        ctx.pos_info = None if pos is None else (pos.shape, pos.dtype)
        ctx.deterministic, ctx.impl = deterministic, impl
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[no-untyped-def, override]
        idx, table, w1, b1, w2, _b2 = ctx.saved_tensors
        dcode = launch.code_grad_sum(idx, dout, table.shape[0], deterministic=ctx.deterministic)
        grads = table_mlp.backward(table, w1, b1, w2, dcode.to(w1.dtype), impl=ctx.impl)
        return (None, None, *_param_grads(ctx, grads), _pos_grad(ctx, dout), None, None, None)


def _param_grads(ctx, grads: tuple[Tensor, ...]) -> list[Tensor | None]:  # type: ignore[no-untyped-def]
    needs = ctx.needs_input_grad[2:6]
    return [g.to(dt) if need else None for g, dt, need in zip(grads, ctx.param_dtypes, needs)]


def _pos_grad(ctx, dout: Tensor) -> Tensor | None:  # type: ignore[no-untyped-def]
    if ctx.pos_info is None or not ctx.needs_input_grad[6]:
        return None
    shape, dtype = ctx.pos_info
    n_pos = shape.numel() // dout.shape[-1]
    return dout.float().reshape(-1, n_pos, dout.shape[-1]).sum(0).reshape(shape).to(dtype)


def codebook_table(table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, *,
                   dtype: torch.dtype | None = None, table_impl: str | None = None) -> Tensor:
    """[V, D] = MLP(table), no autograd: the frozen-inference table."""
    dtype = dtype or compute_dtype(table.device, w1.dtype)
    if _runtime.device_reason(table.device) is not None or _runtime.dtype_reason(table.device, dtype) is not None:
        with torch.no_grad():
            return codebook_table_reference(table, w1.to(dtype), b1.to(dtype), w2.to(dtype), b2.to(dtype))
    cast = [_prep(t.detach(), dtype) for t in (table, w1, b1, w2, b2)]
    with torch.no_grad():
        return table_mlp.forward(*cast, impl=table_mlp.resolve(table_impl))


def gather_table(indices: Tensor, tab: Tensor, pos_embed: Tensor | None = None) -> Tensor:
    """indices [..., N] -> tab[indices] (+ pos_embed) [..., N, D], no autograd. Indices must be checked already."""
    width = tab.shape[1]
    if _runtime.reason(tab) is not None:
        out = torch.nn.functional.embedding(indices.long(), tab)
        return out if pos_embed is None else out + pos_embed.reshape(-1, width).to(out.dtype)
    out = launch.gather(_flat(indices), tab, _pos2d(pos_embed, width), out_dtype=tab.dtype)
    return out.reshape(*indices.shape, width)


def lookup_mlp(
    indices: Tensor, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, *,
    pos_embed: Tensor | None = None, strategy: Strategy = "auto", deterministic: bool | None = None,
    table_impl: str | None = None,
) -> Tensor:
    """indices [..., N] int -> MLP(table[indices]) (+ pos_embed [N, D]) as [..., N, D].

    table [V, c] (the normalised code vectors, frozen), w1 [hidden, c], b1 [hidden], w2 [D, hidden], b2 [D]:
    ``fc1``/``fc2`` of the MLP (Linear -> exact erf GELU -> Linear). Differentiable in w1, b1, w2, b2 and
    pos_embed. ``deterministic`` (default: torch.are_deterministic_algorithms_enabled()) makes the codebook
    strategy's per-code sum use sort + segment sums instead of float32 atomics. ``table_impl`` (``torch`` |
    ``triton``, default ``table_mlp.DEFAULT``) runs the codebook strategy's MLP over the codebook rows with
    cuBLAS or with the fused kernels. Out-of-range indices raise InputError. The result is in the compute
    dtype (autocast's, else the weights').
    """
    check_lookup_inputs(indices, table, w1, b1, w2, b2, pos_embed)
    impl = table_mlp.resolve(table_impl)
    width = w2.shape[0]
    dtype = compute_dtype(table.device, w1.dtype)
    params = (w1, b1, w2, b2) if pos_embed is None else (w1, b1, w2, b2, pos_embed)
    needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    resolved = choose_strategy(strategy, n_tokens=indices.numel(), vocab=table.shape[0], width=width,
                               itemsize=torch.empty((), dtype=dtype).element_size(), needs_grad=needs_grad)
    table_grad = torch.is_grad_enabled() and table.requires_grad
    if table_grad and strategy == "auto":
        resolved = "reference"
    elif table_grad and resolved != "reference":
        raise InputError(
            f"strategy={resolved!r} treats the code table as frozen and gives it no gradient, but it requires grad; "
            "pass table.detach() or use strategy='reference'"
        )
    if resolved == "reference":
        return lookup_mlp_reference(indices, table, w1, b1, w2, b2, pos_embed, check=False)
    if _runtime.device_reason(table.device) is not None or _runtime.dtype_reason(table.device, dtype) is not None:
        fallback = codebook_mlp_reference if resolved == "codebook" else lookup_mlp_reference
        return fallback(indices, table, w1, b1, w2, b2, pos_embed, check=False)
    idx = _flat(indices)
    if resolved == "codebook":
        out = _CodebookFn.apply(idx, table, w1, b1, w2, b2, pos_embed, dtype, deterministic_default(deterministic),
                                impl)
    else:
        out = _PerTokenFn.apply(idx, table, w1, b1, w2, b2, pos_embed, dtype)
    return out.reshape(*indices.shape, width)
