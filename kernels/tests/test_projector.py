"""The mlp-fused projector: interchangeable with toklip's mlp projector, strategies, and the frozen-inference
table cache (reused while nothing changes, rebuilt when weights, codebook, dtype or device change)."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip.layers import MLPProjector
from toklip import ConfigError, InputError
from toklip_kernels.lookup_mlp.projector import FusedMLPProjector

pytestmark = pytest.mark.triton_interpret

V, C, W = 40, 8, 32


def _setup(device, strategy="auto", **kw):
    proj = FusedMLPProjector(C, V, W, hidden=64, strategy=strategy, **kw).to(device)
    table = torch.nn.functional.normalize(torch.randn(V, C), dim=-1).to(device)
    indices = torch.randint(0, V, (2, 12), device=device)
    return proj, table, indices, table[indices]


def test_checkpoints_interchange_with_mlp_projector(device):
    proj, table, indices, codes = _setup(device)
    mlp = MLPProjector(C, V, W, hidden=64).to(device)
    assert proj.state_dict().keys() == mlp.state_dict().keys()
    mlp.load_state_dict(proj.state_dict())
    with torch.no_grad():
        want = mlp(codes, indices)
        for strategy in ("per_token", "codebook", "reference", "auto"):
            proj.strategy = strategy
            proj.clear_cache()
            torch.testing.assert_close(proj(codes, indices, lambda: table), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy,table_impl", [("per_token", None), ("codebook", "torch"), ("codebook", "triton")])
def test_training_gradients_match_mlp_projector(strategy, table_impl, device):
    proj, table, indices, codes = _setup(device, strategy, table_impl=table_impl)
    mlp = MLPProjector(C, V, W, hidden=64).to(device)
    mlp.load_state_dict(proj.state_dict())
    dout = torch.randn(2, 12, W, device=device)
    (proj(codes, indices, lambda: table) * dout).sum().backward()
    (mlp(codes, indices) * dout).sum().backward()
    assert proj.last_strategy == strategy
    for (name, p), q in zip(proj.named_parameters(), mlp.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_table_cache_reused_then_invalidated(device):
    proj, table, indices, codes = _setup(device, "codebook")
    calls = []

    def code_table():
        calls.append(1)
        return table

    with torch.no_grad():
        first = proj(codes, indices, code_table)
        cached = proj._cache.table
        proj(codes, indices, code_table)
        assert proj._cache.table is cached, "unchanged weights and codebook: the table is reused"

        proj.fc2.bias.add_(1.0)  # an in-place update, as optimizer.step() does
        moved = proj(codes, indices, code_table)
        assert proj._cache.table is not cached
        torch.testing.assert_close(moved, first + 1.0, atol=1e-5, rtol=1e-5)

        cached = proj._cache.table
        proj.load_state_dict({k: v.clone() * 0.5 for k, v in proj.state_dict().items()})
        proj(codes, indices, code_table)
        assert proj._cache.table is not cached, "load_state_dict must invalidate the table"

        cached = proj._cache.table
        table[3] = -table[3]  # a different codebook
        out = proj(codes, indices, code_table)
        assert proj._cache.table is not cached, "a changed codebook must invalidate the table"
        want = proj.fc2(torch.nn.functional.gelu(proj.fc1(table[indices])))
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(calls) == 5


def test_cache_not_used_when_gradients_are_needed(device):
    proj, table, indices, codes = _setup(device, "codebook")
    with torch.no_grad():
        proj(codes, indices, lambda: table)
    out = proj(codes, indices, lambda: table)
    assert out.requires_grad
    out.sum().backward()
    assert proj.fc1.weight.grad is not None


def test_cache_can_be_disabled(device):
    proj, table, indices, codes = _setup(device, "codebook", cache=False)
    with torch.no_grad():
        proj(codes, indices, lambda: table)
    assert proj._cache is None


def test_falls_back_to_codes_without_indices_or_table(device):
    proj, table, indices, codes = _setup(device)
    with torch.no_grad():
        want = proj(codes, indices, lambda: table)
        torch.testing.assert_close(proj(codes), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(proj(codes, indices, lambda: None), want, atol=1e-5, rtol=1e-5)
    assert proj.last_strategy == "reference"
    proj.strategy = "per_token"
    with pytest.raises(ConfigError, match="code table"):
        proj(codes, indices, lambda: None)


def test_codes_requiring_grad(device):
    proj, table, indices, codes = _setup(device)
    codes.requires_grad_()
    out = proj(codes, indices, lambda: table)  # auto: the reference path, which differentiates the codes
    (g,) = torch.autograd.grad(out.sum(), [codes])
    assert g.abs().sum() > 0
    proj.strategy = "codebook"
    with pytest.raises(InputError, match="detach"):
        proj(codes, indices, lambda: table)


def test_out_of_range_index_raises(device):
    proj, table, indices, codes = _setup(device, "codebook")
    indices[0, 0] = V
    with torch.no_grad(), pytest.raises(InputError, match="out of range"):
        proj(codes, indices, lambda: table)


def test_unknown_strategy():
    with pytest.raises(ConfigError, match="strategy"):
        FusedMLPProjector(C, V, W, strategy="turbo")


def test_registered_by_the_kernels_plugin():  # conformance: tests/test_contract.py (toklip's kit)
    spec = toklip.get_spec("projector", "mlp-fused-test")
    assert spec.provider is not None and spec.provider.plugin == "kernels"


def test_is_the_builtin_mlp_projector_so_checkpoints_interchange():
    from toklip.layers import MLPProjector

    fused = FusedMLPProjector(C, V, W)
    assert isinstance(fused, MLPProjector)
    plain = MLPProjector(C, V, W)
    plain.load_state_dict(fused.state_dict(), strict=True)
