"""Attention dispatch: which backend runs a call, and the timm-compatible attention layer that uses it.

Resolution order for a call: ``with toklip.attention_backend(name)`` > ``TOKLIP_ATTN_BACKEND`` > the model's
configured backend. ``"auto"`` picks the first backend in AUTO_PRIORITY that is installed and supports the
call (device, dtype, head_dim, mask).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from timm.layers import Attention
from torch import Tensor

from toklip.core.errors import InputError, MissingDependencyError, UnknownComponentError
from toklip.core.host import get_host

# Only backends verified on a GPU in this repository belong here (see kernels/README.md for `triton`).
AUTO_PRIORITY = ("flash_attn", "sdpa", "eager")

_local = threading.local()
# Per plugin host, and dropped with it: a host's id can be reused by a new host after garbage collection, so
# caches keyed by id() could hand one host's backend to another.
_instances: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_auto_cache: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Force an attention backend for the calls in this block (diffusers' ``attention_backend``)."""
    backend_instance(name)  # fail early on unknown / uninstalled names
    stack = getattr(_local, "stack", [])
    _local.stack = [*stack, name]
    try:
        yield
    finally:
        _local.stack = stack


def backend_instance(name: str) -> Any:
    host = get_host()
    instances = _instances.setdefault(host, {})
    if name not in instances:
        spec = host.get("attn_backend", name)
        instances[name] = instances.setdefault(spec.name, spec.create())
    return instances[name]


def requested_backend(configured: str) -> str:
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return os.environ.get("TOKLIP_ATTN_BACKEND") or configured


def _auto(q: Tensor, causal: bool, has_mask: bool) -> str:
    cache = _auto_cache.setdefault(get_host(), {})
    key = (q.device.type, q.dtype, q.shape[-1], causal, has_mask)
    if key not in cache:
        for name in AUTO_PRIORITY:
            try:
                backend = backend_instance(name)
            except (MissingDependencyError, UnknownComponentError):
                continue
            if backend.supports(q, causal=causal, has_mask=has_mask) is None:
                cache[key] = name
                break
        else:  # pragma: no cover - eager supports everything
            cache[key] = "eager"
    return cache[key]


def run_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None,
    scale: float | None = None, backend: str = "auto",
) -> Tensor:
    name = requested_backend(backend)
    has_mask = attn_mask is not None
    if name == "auto":
        name = _auto(q, causal, has_mask)
    impl = backend_instance(name)
    reason = impl.supports(q, causal=causal, has_mask=has_mask)
    if reason is not None:
        raise InputError(
            f"attention backend {name!r} cannot run this call: {reason} "
            f"(q {tuple(q.shape)} {q.dtype} on {q.device.type}); use attn_backend='auto' or 'sdpa'"
        )
    return impl(q, k, v, causal=causal, attn_mask=attn_mask, scale=scale)


class BackendAttention(Attention):
    """timm's ``Attention`` (same parameters and state-dict keys) routed through a toklip backend."""

    backend: str = "auto"

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = run_attention(q, k, v, causal=is_causal, attn_mask=attn_mask, scale=self.scale, backend=self.backend)
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))
