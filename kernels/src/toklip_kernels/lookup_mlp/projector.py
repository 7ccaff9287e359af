"""``mlp-fused``: TokLIP's MLP projector (same ``fc1``/``fc2`` parameters as toklip's ``mlp``) on the Triton
lookup + MLP kernels, with a cached codebook table for frozen inference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from toklip import ConfigError, InputError
from toklip.layers import MLPProjector
from toklip_kernels.lookup_mlp.function import (
    STRATEGIES,
    Strategy,
    choose_strategy,
    codebook_table,
    compute_dtype,
    gather_table,
    lookup_mlp,
)
from toklip_kernels.lookup_mlp import table_mlp
from toklip_kernels.lookup_mlp.reference import check_lookup_inputs


@dataclass
class _TableCache:
    """The [V, D] table and what it was computed from (parameter identity + version, codebook, dtype)."""

    key: tuple
    codes: Tensor
    table: Tensor


class FusedMLPProjector(MLPProjector):
    """Linear(c, hidden) -> exact GELU -> Linear(hidden, D) on VQ indices, hidden = 4D by default.

    ``strategy``: ``auto`` | ``per_token`` | ``codebook`` | ``reference`` (see toklip_kernels.lookup_mlp).
    ``deterministic``: codebook backward via sort + segment sums instead of atomics. ``table_impl``: ``torch``
    (cuBLAS) or ``triton`` (fused kernels) for the MLP over the codebook rows. Without gradients the
    codebook table is cached and rebuilt only when the weights (in-place updates bump their version), the
    codebook, the device or the compute dtype change. A subclass of toklip's ``mlp`` projector (``toklip.layers.MLPProjector``): checkpoints interchange by construction.
    """

    def __init__(self, code_dim: int, vocab_size: int, width: int, hidden: int | None = None,
                 strategy: Strategy = "auto", deterministic: bool = False, cache: bool = True,
                 table_impl: str | None = None, **_: object) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r} for the mlp-fused projector; choose one of "
                              f"{', '.join(STRATEGIES)}")
        super().__init__(code_dim, vocab_size, width, hidden)
        self.strategy: Strategy = strategy
        self.deterministic = deterministic
        self.cache = cache
        self.table_impl = table_mlp.resolve(table_impl)
        self._cache: _TableCache | None = None
        self.last_strategy: str | None = None  # what the last forward ran (for tests and benchmarks)

    def extra_repr(self) -> str:
        return (f"strategy={self.strategy!r}, deterministic={self.deterministic}, cache={self.cache}, "
                f"table_impl={self.table_impl!r}")

    def clear_cache(self) -> None:
        self._cache = None

    def _params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias

    def _reference(self, codes: Tensor) -> Tensor:
        self.last_strategy = "reference"
        return super().forward(codes)

    def _cache_key(self, dtype: torch.dtype) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self._params()) + (dtype, self.table_impl)

    def _cached_table(self, table: Tensor, dtype: torch.dtype) -> Tensor | None:
        c = self._cache
        if c is None or c.key != self._cache_key(dtype) or c.codes.shape != table.shape:
            return None
        return c.table if torch.equal(c.codes, table.to(c.codes.dtype)) else None

    def forward(self, codes: Tensor, indices: Tensor | None = None,
                code_table: Callable[[], Tensor | None] | None = None) -> Tensor:
        """codes [B, N, c], indices [B, N], code_table() -> [V, c] -> [B, N, D]."""
        explicit = self.strategy not in ("auto", "reference")
        table = code_table() if (code_table is not None and indices is not None) else None
        if self.strategy == "reference" or table is None:
            if explicit:
                raise ConfigError(
                    f"strategy={self.strategy!r} needs the code indices and the tokenizer's code table; this "
                    "tokenizer gave none (code_table() is None for very large codebooks): use strategy='auto'"
                )
            return self._reference(codes)
        if codes.requires_grad and torch.is_grad_enabled():
            if explicit:
                raise InputError(
                    f"strategy={self.strategy!r} computes from the (frozen) code table and gives the code vectors no "
                    "gradient, but they require grad; detach them or use strategy='reference'"
                )
            return self._reference(codes)
        assert indices is not None
        w1, b1, w2, b2 = self._params()
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in (w1, b1, w2, b2))
        if not needs_grad:
            dtype = compute_dtype(table.device, w1.dtype)
            cached = self._cached_table(table, dtype) if self.cache else None
            resolved = choose_strategy(self.strategy, n_tokens=indices.numel(), vocab=table.shape[0], width=self.width,
                                       itemsize=torch.empty((), dtype=dtype).element_size(), needs_grad=False,
                                       table_cached=cached is not None)
            if resolved == "codebook":
                check_lookup_inputs(indices, table, w1, b1, w2, b2)
                if cached is None:
                    cached = codebook_table(table, w1, b1, w2, b2, dtype=dtype, table_impl=self.table_impl)
                    if self.cache:
                        self._cache = _TableCache(self._cache_key(dtype), table.detach().clone(), cached)
                self.last_strategy = "codebook"
                return gather_table(indices, cached)
        resolved = choose_strategy(self.strategy, n_tokens=indices.numel(), vocab=table.shape[0], width=self.width,
                                   itemsize=w1.element_size(), needs_grad=needs_grad)
        self.last_strategy = resolved
        return lookup_mlp(indices, table, w1, b1, w2, b2, strategy=resolved, deterministic=self.deterministic,
                          table_impl=self.table_impl)
