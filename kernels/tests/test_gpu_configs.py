"""The GPU launch path (the default GPU tile sizes, grids and token splits) run in the interpreter: the configs a
GPU would use must give the right answer too, including tiles larger than the problem."""

from __future__ import annotations

import pytest
import torch

from toklip_kernels import _runtime
from toklip_kernels.attention import attention_reference, flash_attention
from toklip_kernels.lookup_mlp import lookup_mlp, lookup_mlp_reference

pytestmark = pytest.mark.triton_interpret


@pytest.fixture(autouse=True)
def gpu_configs(monkeypatch):
    monkeypatch.setattr(_runtime, "FORCE_GPU_CONFIGS", True)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("n,d", [(150, 72), (70, 128)])
def test_attention_with_gpu_configs(n, d, causal, device):
    q, k, v = (torch.randn(1, 1, n, d, device=device, requires_grad=True) for _ in range(3))
    out = flash_attention(q, k, v, causal=causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_reference(*ref_in, causal=causal)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strategy,impl", [("per_token", None), ("codebook", "triton"), ("codebook", "torch")])
def test_lookup_mlp_with_gpu_configs(strategy, impl, device):
    vocab, code_dim, hidden, width = 70, 8, 96, 160
    table = torch.nn.functional.normalize(torch.randn(vocab, code_dim, device=device), dim=-1)
    params = [(torch.randn(*s, device=device) * 0.2).requires_grad_() for s in
              ((hidden, code_dim), (hidden,), (width, hidden), (width,))]
    idx = torch.randint(0, vocab, (3, 50), device=device)
    for det in (False, True):
        out = lookup_mlp(idx, table, *params, strategy=strategy, table_impl=impl, deterministic=det)
        dout = torch.randn_like(out)
        grads = torch.autograd.grad(out, params, dout)
        ref_p = [p.detach().double().requires_grad_() for p in params]
        ref = lookup_mlp_reference(idx, table.double(), *ref_p)
        ref_grads = torch.autograd.grad(ref, ref_p, dout.double())
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)
