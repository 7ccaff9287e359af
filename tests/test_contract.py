"""Every registered tiny component, builtin or plugin, passes its kind's conformance check (timm's
test_models habit): adding a component to a registry automatically adds it here."""

from __future__ import annotations

import pytest

import toklip
from toklip.testing import conformance
from toklip.core.host import PluginHost

CHECKS = {
    "vq": conformance.check_vq_tokenizer,
    "encoder": conformance.check_encoder,
    "projector": conformance.check_projector,
    "attn_backend": conformance.check_attn_backend,
    "fusion": conformance.check_fusion,
}


def _test_names():
    host = PluginHost(autoload=False)
    return [(kind, name) for kind in CHECKS
            for name in host.registry(kind).names("*-test", include_aliases=True)]


@pytest.mark.parametrize("kind,name", _test_names())
def test_component_conforms(kind, name):
    CHECKS[kind](name)


# Components with no tiny CPU variant, and why (open_clip keeps the same kind of list).
EXEMPT = {
    ("attn_backend", "flash_attn"): "CUDA-only adapter; checked against eager by test_gpu_attention_adapters",
    ("attn_backend", "xformers"): "CUDA-only adapter; checked against eager by test_gpu_attention_adapters",
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["flash_attn", "xformers"])
def test_gpu_attention_adapters(name):
    import torch

    spec = toklip.get_spec("attn_backend", name)
    if spec.missing_requirements():
        pytest.skip(f"{name} not installed: {spec.status()}")
    conformance.check_attn_backend(name, device="cuda", dtype=torch.bfloat16, atol=2e-2, rtol=2e-2)


def test_every_component_has_a_test_variant():
    host = PluginHost(autoload=False)
    for kind in ("vq", "encoder", "projector", "attention", "attn_backend", "fusion"):
        reg = host.registry(kind)
        names = set(reg.all_names())
        for spec in reg:
            if spec.name.endswith("-test") or (kind, spec.name) in EXEMPT:
                continue
            family = spec.name.rsplit("-", 1)[0]
            has = any(n == f"{spec.name}-test" or (n.endswith("-test") and n.startswith(family.split("-")[0]))
                      for n in names)
            assert has, f"{kind} {spec.name!r} has no tiny '*-test' variant"


def test_presets_build():
    for name in toklip.list_presets():
        model = toklip.build(name, device="meta")
        assert model.grid[0] * model.vq.downsample == model.image_size
