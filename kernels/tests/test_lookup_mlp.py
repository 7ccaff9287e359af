"""Lookup + MLP kernels (per-token fused and codebook-space) vs the float64 per-token reference, forward and
backward, at tiny shapes (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from toklip import ConfigError, InputError
from toklip_kernels.lookup_mlp import (
    choose_strategy,
    codebook_mlp_reference,
    codebook_table,
    gather_table,
    lookup_mlp,
    lookup_mlp_reference,
)

pytestmark = pytest.mark.triton_interpret

V, C, HID, D = 50, 8, 96, 40  # hidden not a multiple of the tile, D not a power of two


def _weights(device, dtype, *, hidden=HID, width=D, code_dim=C, vocab=V):
    table = torch.nn.functional.normalize(torch.randn(vocab, code_dim), dim=-1).to(device, dtype)
    w1 = (torch.randn(hidden, code_dim) * 0.5).to(device, dtype).requires_grad_()
    b1 = (torch.randn(hidden) * 0.1).to(device, dtype).requires_grad_()
    w2 = (torch.randn(width, hidden) * 0.1).to(device, dtype).requires_grad_()
    b2 = (torch.randn(width) * 0.1).to(device, dtype).requires_grad_()
    return table, w1, b1, w2, b2


def _check(strategy, dtype, device, *, pos=False, deterministic=False, b=2, n=23):
    strategy, _, table_impl = strategy.partition(":")  # "codebook:triton" = the fused kernels over the codebook
    table, *params = _weights(device, dtype)
    if pos:
        params.append((torch.randn(n, D) * 0.1).to(device, dtype).requires_grad_())
    indices = torch.randint(0, V, (b, n), device=device)
    indices[0, :5] = 7  # repeated codes: the codebook backward must sum them
    out = lookup_mlp(indices, table, *params[:4], pos_embed=params[4] if pos else None, strategy=strategy,
                     deterministic=deterministic, table_impl=table_impl or None)
    assert out.shape == (b, n, D) and out.dtype == dtype
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, dout)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    ref = lookup_mlp_reference(indices, table.double(), *ref_params[:4], pos_embed=ref_params[4] if pos else None)
    ref_grads = torch.autograd.grad(ref, ref_params, dout.double())
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "pos_embed"]
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        for name, g, r in zip(names, grads, ref_grads):
            torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5, msg=name)
        return
    # fp16: within 2x (out) / 3x (grads) of PyTorch's own fp16 error, FA-style
    low = [p.detach().clone().requires_grad_() for p in params]
    base = lookup_mlp_reference(indices, table, *low[:4], pos_embed=low[4] if pos else None)
    base_grads = torch.autograd.grad(base, low, dout)
    err, ref_err = (out.double() - ref).abs().max().item(), (base.double() - ref).abs().max().item()
    assert err <= 2 * ref_err + 1e-3, f"out error {err:.3g} vs PyTorch fp16 {ref_err:.3g}"
    for name, g, bg, r in zip(names, grads, base_grads, ref_grads):
        err, ref_err = (g.double() - r).abs().max().item(), (bg.double() - r).abs().max().item()
        assert err <= 3 * ref_err + 1e-3, f"{name} error {err:.3g} vs PyTorch fp16 {ref_err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("strategy", ["per_token", "codebook:torch", "codebook:triton"])
def test_strategies_match_reference(strategy, dtype, device):
    _check(strategy, dtype, device)


@pytest.mark.parametrize("strategy", ["per_token", "codebook:triton"])
def test_pos_embed_epilogue(strategy, device):
    _check(strategy, torch.float32, device, pos=True)


def test_codebook_deterministic_segment_sum(device):
    _check("codebook:triton", torch.float32, device, deterministic=True)
    _check("codebook:torch", torch.float16, device, deterministic=True)


@pytest.mark.parametrize("strategy,table_impl", [("per_token", None), ("codebook", "triton"), ("codebook", "torch")])
def test_backward_bitwise_reproducible(strategy, table_impl, device):
    table, *params = _weights(device, torch.float32)
    indices = torch.randint(0, V, (2, 33), device=device)
    dout = torch.randn(2, 33, D, device=device)

    def grads():
        out = lookup_mlp(indices, table, *params, strategy=strategy, deterministic=True, table_impl=table_impl)
        return torch.autograd.grad(out, params, dout)

    assert all(torch.equal(a, b) for a, b in zip(grads(), grads()))


def test_strategies_agree_with_each_other(device):
    table, *params = _weights(device, torch.float32)
    indices = torch.randint(0, V, (3, 17), device=device)
    a = lookup_mlp(indices, table, *params, strategy="per_token")
    b = lookup_mlp(indices, table, *params, strategy="codebook", table_impl="triton")
    c = codebook_mlp_reference(indices, table, *params)
    torch.testing.assert_close(lookup_mlp(indices, table, *params, strategy="codebook", table_impl="torch"), c,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)


def test_code_dim_other_than_8_and_int32_indices(device):
    table, *params = _weights(device, torch.float32, code_dim=4, hidden=64, width=32, vocab=20)
    indices = torch.randint(0, 20, (2, 9), device=device, dtype=torch.int32)
    for strategy in ("per_token", "codebook"):
        out = lookup_mlp(indices, table, *params, strategy=strategy)
        torch.testing.assert_close(out, lookup_mlp_reference(indices, table, *params), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("table_impl", ["torch", "triton"])
def test_frozen_table_build_and_gather(table_impl, device):
    table, *params = _weights(device, torch.float32)
    with torch.no_grad():
        tab = codebook_table(table, *params, table_impl=table_impl)
        indices = torch.randint(0, V, (2, 11), device=device)
        pos = torch.randn(11, D, device=device)
        got = gather_table(indices, tab, pos)
        want = lookup_mlp_reference(indices, table, *params, pos_embed=pos)
    assert tab.shape == (V, D)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_empty_batch(device):
    table, *params = _weights(device, torch.float32)
    indices = torch.zeros(0, 5, dtype=torch.long, device=device)
    for strategy in ("per_token", "codebook"):
        out = lookup_mlp(indices, table, *params, strategy=strategy)
        assert out.shape == (0, 5, D)
        out.sum().backward()


@pytest.mark.parametrize("strategy", ["per_token", "codebook", "reference", "auto"])
@pytest.mark.parametrize("bad", [-1, V, 10 * V])
def test_out_of_range_indices_raise(strategy, bad, device):
    table, *params = _weights(device, torch.float32)
    indices = torch.randint(0, V, (2, 6), device=device)
    indices[1, 3] = bad
    with pytest.raises(InputError, match=f"code index {bad} is out of range"):
        lookup_mlp(indices, table, *params, strategy=strategy)


def test_bad_shapes_and_types(device):
    table, w1, b1, w2, b2 = _weights(device, torch.float32)
    idx = torch.randint(0, V, (2, 6), device=device)
    with pytest.raises(InputError, match="integer"):
        lookup_mlp(idx.float(), table, w1, b1, w2, b2)
    with pytest.raises(InputError, match="do not fit"):
        lookup_mlp(idx, table, w1[:, :4], b1, w2, b2)
    with pytest.raises(InputError, match="pos_embed"):
        lookup_mlp(idx, table, w1, b1, w2, b2, pos_embed=torch.randn(5, D, device=device))
    with pytest.raises(ConfigError, match="unknown lookup-MLP strategy"):
        lookup_mlp(idx, table, w1, b1, w2, b2, strategy="fast")
    with pytest.raises(ConfigError, match="unknown table implementation"):
        lookup_mlp(idx, table, w1, b1, w2, b2, table_impl="cutlass")


def test_trainable_codebook_is_refused_or_falls_back(device):
    table, *params = _weights(device, torch.float32)
    table.requires_grad_()
    idx = torch.randint(0, V, (2, 6), device=device)
    with pytest.raises(InputError, match="frozen"):
        lookup_mlp(idx, table, *params, strategy="codebook")
    out = lookup_mlp(idx, table, *params, strategy="auto")  # the reference path gives the table its gradient
    (g,) = torch.autograd.grad(out.sum(), [table])
    assert g.abs().sum() > 0


def test_auto_strategy_rule():
    kw = dict(vocab=16384, width=1152, itemsize=2)
    assert choose_strategy("auto", n_tokens=256 * 576, needs_grad=True, **kw) == "codebook"
    assert choose_strategy("auto", n_tokens=8 * 576, needs_grad=True, **kw) == "per_token"
    assert choose_strategy("auto", n_tokens=8 * 576, needs_grad=False, **kw) == "codebook"
    assert choose_strategy("auto", n_tokens=576, needs_grad=False, **kw) == "per_token"
    assert choose_strategy("auto", n_tokens=576, needs_grad=False, table_cached=True, **kw) == "codebook"
    assert choose_strategy("auto", n_tokens=10**6, needs_grad=True, vocab=2**20, width=4096, itemsize=2) == "per_token"
    assert choose_strategy("per_token", n_tokens=10**6, needs_grad=True, **kw) == "per_token"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
@pytest.mark.parametrize("strategy", ["per_token", "codebook"])
def test_cpu_without_interpreter_falls_back_to_pytorch(strategy, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    table, *params = _weights("cpu", torch.float32)
    idx = torch.randint(0, V, (2, 6))
    out = lookup_mlp(idx, table, *params, strategy=strategy)
    torch.testing.assert_close(out, lookup_mlp_reference(idx, table, *params), atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("strategy", ["per_token", "codebook:triton", "codebook:torch"])
def test_never_reads_outside_its_inputs(strategy, device):
    """The code table and every weight are views into NaN-filled buffers: an unmasked load beyond the real
    rows or columns would turn the result into NaN."""
    strategy, _, impl = strategy.partition(":")

    def fenced(*shape):
        buf = torch.full(tuple(s + 5 for s in shape), float("nan"), device=device)
        view = buf[tuple(slice(2, 2 + s) for s in shape)]
        view.copy_(torch.randn(*shape) * 0.3)
        return view.detach()  # a leaf that still lives inside the NaN buffer

    table = fenced(V, C)
    params = [fenced(HID, C), fenced(HID), fenced(D, HID), fenced(D)]
    assert params[0].stride(0) == C + 5 and not any(torch.isnan(p).any() for p in params)
    params = [p.requires_grad_() for p in params]
    indices = torch.randint(0, V, (2, 19), device=device)
    indices[0, 0], indices[0, 1] = 0, V - 1  # the first and last rows
    out = lookup_mlp(indices, table, *params, strategy=strategy, table_impl=impl or None)
    grads = torch.autograd.grad(out, params, torch.randn_like(out))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, lookup_mlp_reference(indices, table, *params), atol=1e-5, rtol=1e-5)
