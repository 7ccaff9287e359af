"""Projectors from per-token image features [B, N, D] to the language model's hidden size [B, N, H].

Names follow LLaVA's ``mm_projector_type``: ``linear`` is one Linear(D, H); ``mlp{k}x_gelu`` is Linear(D, H)
followed by k-1 times (GELU, Linear(H, H)), so ``mlp2x_gelu`` is LLaVA-1.5's Linear -> GELU -> Linear (biases on).
Other projectors join through :func:`register_vlm_projector` (a plugin calls it from its import hook).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from toklip.core.errors import ConfigError

ProjectorFactory = Callable[..., nn.Module]  # factory(in_dim=, out_dim=, **kwargs) -> nn.Module
MAX_MLP_DEPTH = 8
_MLP = re.compile(r"mlp(\d{1,2})x_gelu")
_REGISTRY: dict[str, ProjectorFactory] = {}


def register_vlm_projector(name: str, factory: ProjectorFactory, *, replace: bool = False) -> None:
    """Add a projector under ``name``: ``factory(in_dim=D, out_dim=H, **kwargs)`` returns [.., D] -> [.., H]."""
    if not replace and (name in _REGISTRY or name == "linear" or _MLP.fullmatch(name)):
        raise ConfigError(f"a VLM projector named {name!r} already exists (pass replace=True to override it)")
    _REGISTRY[name] = factory


def list_vlm_projectors() -> list[str]:
    return sorted({"linear", "mlp2x_gelu", *_REGISTRY})


def mlp_gelu(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """LLaVA's ``mlp{depth}x_gelu``: Linear(in, out), then (GELU, Linear(out, out)) depth - 1 times."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def build_vlm_projector(name: str, in_dim: int, out_dim: int, **kwargs: object) -> nn.Module:
    """The projector ``name`` mapping ``in_dim`` features to ``out_dim`` (the LLM hidden size)."""
    if name in _REGISTRY:
        return _REGISTRY[name](in_dim=in_dim, out_dim=out_dim, **kwargs)
    if kwargs:
        raise ConfigError(f"projector {name!r} takes no options, got {sorted(kwargs)}")
    if name == "linear":
        return nn.Linear(in_dim, out_dim)
    m = _MLP.fullmatch(name)
    if m:
        depth = int(m.group(1))
        if not 1 <= depth <= MAX_MLP_DEPTH:
            raise ConfigError(f"projector {name!r}: depth must be 1..{MAX_MLP_DEPTH}")
        return mlp_gelu(in_dim, out_dim, depth)
    import difflib

    known = list_vlm_projectors()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown VLM projector {name!r}; known: {', '.join(known)} (or mlp<k>x_gelu).{hint}")
