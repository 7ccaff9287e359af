"""The contract every registered component meets, as tests any project pulls in with one import line::

    # tests/test_contract.py (toklip, the kernels, or a plugin; conftest: pytest_plugins = ["toklip.testing.pytest_plugin"])
    from toklip.testing.contract import test_builds_on_meta, test_conforms  # noqa: F401

The kit parametrises them over the components the project under test provides (toklip: its builtins; a plugin:
what its entry points register): ``test_conforms`` runs the kind's conformance check (from the kinds table) on
every ``*-test`` name, ``test_builds_on_meta`` builds every name, full size included, on the meta device (no
memory, no weights). Names whose optional requirements are not installed are skipped with the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from toklip.core.kinds import KIND_BY_NAME, KINDS_TABLE
from toklip.core.registry import ComponentSpec

# Kinds that are not nn.Modules built from sizes, and why they have no meta-device build.
NOT_BUILT_ON_META = {
    "attention": "a mask rule without parameters (the conformance of the token encoder covers it)",
    "attn_backend": "a function of q, k, v without parameters (conformance compares it with eager)",
    "preset": "a whole model: test_presets_build builds every preset on the meta device",
}


def _vq(spec: ComponentSpec) -> None:
    vq = spec.create()
    for attr in ("code_dim", "vocab_size", "downsample"):
        value = getattr(vq, attr, None)
        assert isinstance(value, int) and value > 0, f"{spec.name}: {attr} must be a positive int, got {value!r}"


def _encoder(spec: ComponentSpec) -> None:
    enc = spec.create()
    token_encoder = enc.build_token_encoder(tuple(enc.grid))
    assert token_encoder.width > 0, f"{spec.name}: token encoder width {token_encoder.width}"
    enc.build_text_tower()
    enc.build_teacher()


def _projector(spec: ComponentSpec) -> None:
    import torch

    proj = spec.create(code_dim=32, vocab_size=64, width=32)  # code_dim == width: identity projectors too
    indices = torch.zeros(2, 4, dtype=torch.long)
    out = proj(torch.zeros(2, 4, 32), indices, None)
    assert tuple(out.shape) == (2, 4, 32), f"{spec.name}: output shape {tuple(out.shape)}"


def _fusion(spec: ComponentSpec) -> None:
    import torch

    fusion = spec.create(low_dim=8, high_dim=32)
    out = fusion(torch.zeros(2, 4, 8), torch.zeros(2, 4, 32))
    assert tuple(out.shape) == (2, 4, fusion.out_dim), f"{spec.name}: output shape {tuple(out.shape)}"


def _generator(spec: ComponentSpec) -> None:
    gen = spec.create()
    assert gen.num_tokens > 0 and gen.config.vocab_size > 0, f"{spec.name}: num_tokens / vocab_size"


def _vlm_projector(spec: ComponentSpec) -> None:
    import torch

    proj = spec.create(in_dim=16, out_dim=24)
    out = proj(torch.zeros(2, 4, 16))
    assert tuple(out.shape) == (2, 4, 24), f"{spec.name}: output shape {tuple(out.shape)}"


BUILD_ON_META: dict[str, Callable[[ComponentSpec], None]] = {
    "vq": _vq, "encoder": _encoder, "projector": _projector, "fusion": _fusion, "generator": _generator,
    "vlm_projector": _vlm_projector,
}


def uncovered_kinds() -> list[str]:
    """Kinds of the table with neither a meta-device build nor a reason not to have one (should be empty)."""
    return [k.name for k in KINDS_TABLE if k.name not in BUILD_ON_META and k.name not in NOT_BUILT_ON_META]


def project_providers(folder: Path) -> set[str]:
    """Provider names of the project a test folder belongs to: its entry points, or toklip's builtins."""
    from toklip.testing.pytest_plugin import project_plugins

    return {p.name for p in project_plugins(folder)} or {"builtin"}


def components(folder: Path, *, test_variants: bool) -> list[Any]:
    """pytest params ``(kind, name)`` of the project's components (``*-test`` names with a conformance check, or
    every name of a kind built on meta), skipped where an optional requirement is missing."""
    from toklip.testing.pytest_plugin import isolated_host, project_plugins

    host = isolated_host(project_plugins(folder), strict=False)
    providers = project_providers(folder)
    params = []
    for kind in KIND_BY_NAME:
        wanted = KIND_BY_NAME[kind].check is not None if test_variants else kind in BUILD_ON_META
        if not wanted:
            continue
        reg = host.registry(kind)
        names = reg.names("*-test", include_aliases=True) if test_variants else reg.names()
        for name in names:
            spec = reg.find(name)
            if spec is None or spec.provider is None or spec.provider.plugin not in providers:
                continue
            missing = spec.missing_requirements()
            marks = [pytest.mark.skip(reason=f"{name}: {', '.join(missing)}")] if missing else []
            params.append(pytest.param((kind, name), id=f"{kind}:{name}", marks=marks))
    return params


def _check(kind: str) -> Callable[..., Any]:
    module, _, attr = (KIND_BY_NAME[kind].check or "").partition(":")
    return getattr(importlib.import_module(module), attr)


def test_conforms(toklip_test_component: tuple[str, str]) -> None:
    """The kind's conformance check on a tiny ``*-test`` component."""
    kind, name = toklip_test_component
    _check(kind)(name)


def test_builds_on_meta(toklip_component: tuple[str, str]) -> None:
    """Every registered name, full size included, builds on the meta device."""
    import torch

    import toklip

    kind, name = toklip_component
    spec = toklip.get_spec(kind, name)
    spec.check_requirements()
    with torch.device("meta"):
        BUILD_ON_META[kind](spec)
