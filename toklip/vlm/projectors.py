"""VLM projectors: per-token image features [B, N, D] -> the language model's hidden size [B, N, H].

A component kind (``vlm_projector``), so plugins add projectors through the same registry as every other
component (``register_vlm_projectors`` hook, or ``toklip.register("vlm_projector", name, factory)``). Factories
are called as ``factory(in_dim=D, out_dim=H, **kwargs)``. Builtin names follow LLaVA's ``mm_projector_type``:
``linear`` is one Linear(D, H); ``mlp{k}x_gelu`` is Linear(D, H) then k-1 times (GELU, Linear(H, H)), so
``mlp2x_gelu`` is LLaVA-1.5's Linear -> GELU -> Linear with biases, as an ``nn.Sequential`` whose state-dict keys
(``0.weight``, ``2.weight``, ...) are LLaVA's ``mm_projector`` keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toklip.core.errors import ConfigError

KIND = "vlm_projector"
MAX_MLP_DEPTH = 8


def mlp_gelu(in_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """LLaVA's ``mlp{depth}x_gelu``: Linear(in, out), then (GELU, Linear(out, out)) depth - 1 times."""
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_MLP_DEPTH:
        raise ConfigError(f"mlp_gelu depth must be an integer in 1..{MAX_MLP_DEPTH}, got {depth!r}")
    _check_dims(in_dim, out_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    """LLaVA-1's ``linear`` projector: one Linear(in, out) with a bias."""
    _check_dims(in_dim, out_dim)
    return nn.Linear(in_dim, out_dim)


def _check_dims(in_dim: Any, out_dim: Any) -> None:
    for name, v in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"a VLM projector's {name} must be a positive integer, got {v!r}")


def build_vlm_projector(name: str, in_dim: int, out_dim: int, **kwargs: Any) -> nn.Module:
    """The registered projector ``name`` mapping ``in_dim`` features to ``out_dim`` (the LLM hidden size).

    An unknown name is an :class:`~toklip.core.errors.UnknownComponentError` with a did-you-mean."""
    from toklip.core.host import get_spec

    if not isinstance(name, str):
        raise ConfigError(f"projector must be a registered VLM projector name, got {name!r}")
    spec = get_spec(KIND, name)
    try:
        return spec.create(in_dim=in_dim, out_dim=out_dim, **kwargs)
    except TypeError as e:
        raise ConfigError(f"VLM projector {name!r} does not take these options {sorted(kwargs)}: {e}") from e


def list_vlm_projectors() -> list[str]:
    from toklip.core.host import list_components

    return list(list_components(KIND))


def check_vlm_projector(name: str, *, in_dim: int = 16, out_dim: int = 24, **kwargs: Any) -> None:
    """The conformance check of the kind, run on every ``*-test`` name: shape, dtype follows the input,
    determinism, gradients reach every trainable parameter, and a state-dict round trip."""
    from toklip.core.host import get_spec

    spec = get_spec(KIND, name)
    proj = spec.create(in_dim=in_dim, out_dim=out_dim, **kwargs)
    assert isinstance(proj, nn.Module), f"{name}: a VLM projector must be an nn.Module, got {type(proj).__name__}"
    x = torch.randn(2, 5, in_dim, generator=torch.Generator().manual_seed(0))
    out = proj(x)
    assert tuple(out.shape) == (2, 5, out_dim), f"{name}: output shape {tuple(out.shape)}, expected (2, 5, {out_dim})"
    assert out.dtype == x.dtype, f"{name}: output dtype {out.dtype} differs from the input's {x.dtype}"
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    assert torch.equal(proj(x), out), f"{name}: not deterministic"
    params = [p for p in proj.parameters() if p.requires_grad]
    assert params, f"{name}: a VLM projector is what stage 1 trains; it has no trainable parameters"
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in params), f"{name}: some parameters get no gradient"
    fresh = spec.create(in_dim=in_dim, out_dim=out_dim, **kwargs)
    fresh.load_state_dict(proj.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), proj(x)), f"{name}: a state-dict round trip changed its output"
