"""Every registered component passes the contract (timm's test_models habit), through the same kit plugins use:
``test_conforms`` runs each kind's conformance check on every ``*-test`` name, ``test_builds_on_meta`` builds
every vq/encoder/projector/fusion name, full size included, on the meta device. Adding a component to a registry
adds it here."""

from __future__ import annotations

import pytest

import toklip
from toklip.core.host import PluginHost
from toklip.core.kinds import KINDS_TABLE
from toklip.testing import conformance, contract
from toklip.testing.contract import test_builds_on_meta, test_conforms  # noqa: F401 - the kit's contract tests


def test_every_kind_of_the_table_has_a_meta_build_or_a_reason():
    assert contract.uncovered_kinds() == [], "add the new kind to toklip.testing.contract.BUILD_ON_META"
    assert {"vq", "encoder", "projector", "fusion"} <= set(contract.BUILD_ON_META)


def test_meta_builds_cover_every_full_size_name(request):
    """The parametrisation is not empty or partial: every builtin name of those kinds is in it."""
    host = PluginHost(autoload=False)
    expected = {(k, n) for k in contract.BUILD_ON_META for n in host.registry(k).names()}
    params = contract.components(request.path.parent, test_variants=False)
    assert {p.values[0] for p in params} == expected
    assert ("encoder", "siglip2-so400m-16-512") in expected and ("vq", "llamagen-vq8") in expected


def test_a_component_that_does_not_build_on_meta_fails_the_contract():
    class Broken:
        def __init__(self, code_dim, vocab_size, width):
            raise RuntimeError("cannot build")

    toklip.register("projector", "breaks-on-meta", Broken)
    with pytest.raises(RuntimeError, match="cannot build"):
        test_builds_on_meta(("projector", "breaks-on-meta"))


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
    for kind in (k.name for k in KINDS_TABLE if k.name != "preset"):
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
