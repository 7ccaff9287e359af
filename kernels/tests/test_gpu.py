"""GPU-only checks (skipped without CUDA): bf16/fp16 numerics at the model's real shapes, every launch config the
autotuner may pick, races between programs, and a training step of the composed model on the Triton paths.

Bounds follow FlashAttention's tests: the kernel's error against a float64 reference must be within 2x (outputs)
or 3x (gradients) of PyTorch's own error in the same low precision. Inputs are fresh random numbers each run
(the seed is printed on failure) and outputs are NaN-poisoned before launch (conftest).
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

import toklip
from toklip_kernels.attention import attention_reference, flash_attention
from toklip_kernels.attention import function as attn_fn
from toklip_kernels.lookup_mlp import launch as mlp_launch
from toklip_kernels.lookup_mlp import lookup_mlp, lookup_mlp_reference

pytestmark = pytest.mark.gpu


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    torch.manual_seed(s)
    return s


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _eager_low_precision(q, k, v, causal, scale):
    """PyTorch in the input dtype (bf16/fp16 matmuls, fp32 softmax): the yardstick for the bounds."""
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def _attention_case(b, h, n, d, causal, dtype, seed):
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    scale = d ** -0.5
    out = flash_attention(q, k, v, causal=causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    r = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_reference(*r, causal=causal)
    ref_grads = torch.autograd.grad(ref, r, dout.double())
    low = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    base = _eager_low_precision(*low, causal, scale)
    base_grads = torch.autograd.grad(base, low, dout)
    msg = f"seed={seed} B={b} H={h} N={n} d={d} causal={causal} {dtype}"
    assert torch.isfinite(out).all(), msg
    assert _max_err(out, ref) <= 2 * _max_err(base, ref) + 1e-5, msg
    for name, g, bg, rg in zip("qkv", grads, base_grads, ref_grads):
        assert torch.isfinite(g).all(), f"d{name} {msg}"
        assert _max_err(g, rg) <= 3 * _max_err(bg, rg) + 1e-5, f"d{name}: {_max_err(g, rg):.3g} vs " \
            f"{_max_err(bg, rg):.3g} {msg}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("b,h,n,d", [(2, 16, 256, 72), (2, 16, 576, 72), (2, 16, 577, 72), (2, 8, 577, 64),
                                     (2, 8, 333, 80), (2, 8, 577, 128), (1, 4, 1000, 96)])
def test_attention_fa_bounds(b, h, n, d, causal, dtype, seed):
    _attention_case(b, h, n, d, causal, dtype, seed)


@pytest.mark.parametrize("kind", ["fwd", "dkdv", "dq"])
def test_every_autotune_candidate_is_correct(kind, monkeypatch, seed):
    """Autotuning may pick any candidate: each must compile (shared memory, registers) and be right."""
    original = attn_fn._gpu_candidates
    for width in (80, 128):
        for cfg in original(kind, width):
            with monkeypatch.context() as mp:
                mp.setattr(attn_fn, "_gpu_candidates", lambda k, w, cfg=cfg: [cfg] if k == kind else original(k, w))
                _attention_case(2, 4, 577, 72 if width == 80 else 128, True, torch.bfloat16, seed)


def test_attention_lse_and_masked_rows_gpu(seed):
    q, k, v = (torch.randn(3, 4, 300, 72, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kv_lens = torch.tensor([0, 77, 300], device="cuda")
    out, lse = flash_attention(q, k, v, causal=True, kv_lens=kv_lens, return_lse=True)
    _, ref_lse = attention_reference(q.double(), k.double(), v.double(), causal=True, kv_lens=kv_lens,
                                       return_lse=True)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isneginf(lse[0]).all()
    torch.testing.assert_close(lse[1:], ref_lse[1:].float(), atol=2e-2, rtol=1e-2)


def test_attention_backward_has_no_races(seed):
    q, k, v = (torch.randn(4, 16, 577, 72, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn(4, 16, 577, 72, device="cuda", dtype=torch.bfloat16)
    runs = [torch.autograd.grad(flash_attention(q, k, v, causal=True), (q, k, v), dout) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other)), "backward must be bitwise deterministic"


# ------------------------------------------------------------------ lookup + MLP at TokLIP size
V, C, D = 16384, 8, 1152


def _mlp_params(dtype):
    table = torch.nn.functional.normalize(torch.randn(V, C, device="cuda"), dim=-1)
    w1 = (torch.randn(4 * D, C, device="cuda") / math.sqrt(C)).to(dtype).requires_grad_()
    b1 = (torch.randn(4 * D, device="cuda") * 0.02).to(dtype).requires_grad_()
    w2 = (torch.randn(D, 4 * D, device="cuda") / math.sqrt(4 * D)).to(dtype).requires_grad_()
    b2 = (torch.randn(D, device="cuda") * 0.02).to(dtype).requires_grad_()
    return table, [w1, b1, w2, b2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("strategy,deterministic,impl", [("per_token", False, None), ("codebook", False, "torch"),
                                                         ("codebook", True, "triton")])
@pytest.mark.parametrize("b,n", [(4, 576), (48, 576)])
def test_lookup_mlp_bounds(strategy, deterministic, impl, dtype, b, n, seed):
    table, params = _mlp_params(dtype)
    idx = torch.randint(0, V, (b, n), device="cuda")
    out = lookup_mlp(idx, table, *params, strategy=strategy, deterministic=deterministic, table_impl=impl)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, dout)
    r = [p.detach().double().requires_grad_() for p in params]
    ref = lookup_mlp_reference(idx, table.double(), *r)
    ref_grads = torch.autograd.grad(ref, r, dout.double())
    low = [p.detach().clone().requires_grad_() for p in params]
    base = lookup_mlp_reference(idx, table, *low)
    base_grads = torch.autograd.grad(base, low, dout)
    msg = f"seed={seed} {strategy} det={deterministic} {dtype} B={b}"
    assert _max_err(out, ref) <= 2 * _max_err(base, ref) + 1e-5, msg
    for name, g, bg, rg in zip(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], grads, base_grads, ref_grads):
        assert _max_err(g, rg) <= 3 * _max_err(bg, rg) + 1e-5, f"{name}: {_max_err(g, rg):.3g} vs " \
            f"{_max_err(bg, rg):.3g} {msg}"


@pytest.mark.parametrize("kind", ["fwd", "dw2", "dw1", "gather", "scatter", "segment"])
def test_every_lookup_candidate_is_correct(kind, monkeypatch, seed):
    table, params = _mlp_params(torch.bfloat16)
    idx = torch.randint(0, V, (8, 577), device="cuda")
    dout = torch.randn(8, 577, D, device="cuda", dtype=torch.bfloat16)
    strategy = "per_token" if kind in ("fwd", "dw2", "dw1") else "codebook"  # codebook: the Triton gather/sums
    want_out = lookup_mlp_reference(idx, table, *params)
    want = torch.autograd.grad(want_out, params, dout)
    for cfg in list(mlp_launch.GPU_CANDIDATES[kind]):
        with monkeypatch.context() as mp:
            mp.setitem(mlp_launch.GPU_CANDIDATES, kind, [cfg])
            out = lookup_mlp(idx, table, *params, strategy=strategy, deterministic=kind == "segment")
            got = torch.autograd.grad(out, params, dout)
        torch.testing.assert_close(out.float(), want_out.float(), atol=3e-2, rtol=3e-2, msg=f"{kind} {cfg}")
        for g, w in zip(got, want):
            rel = (g.float() - w.float()).norm() / w.float().norm()
            assert rel < 2e-2, f"{kind} {cfg}: relative gradient error {rel:.3g}"


def test_deterministic_codebook_backward_is_bitwise_reproducible(seed):
    table, params = _mlp_params(torch.bfloat16)
    idx = torch.randint(0, V, (64, 576), device="cuda")
    dout = torch.randn(64, 576, D, device="cuda", dtype=torch.bfloat16)
    runs = [torch.autograd.grad(lookup_mlp(idx, table, *params, strategy="codebook", deterministic=True), params,
                                dout) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


# ------------------------------------------------------------------ the composed model
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("strategy", ["per_token", "codebook"])
def test_model_trains_on_triton_paths(attention, strategy, seed):
    model = toklip.build("toklip-test", projector={"name": "mlp-fused-test", "strategy": strategy},
                         attn_backend="triton", attention=attention, device="cuda").train()
    model.set_grad_checkpointing(True)
    ref = copy.deepcopy(model)
    ref.projector.strategy = "reference"
    ref.set_attn_backend("eager")
    images = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    texts = ["a", "b", "c", "d"]
    losses = []
    for m in (model, ref):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = m.get_logits(images, texts)
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.arange(4, device="cuda"))
        loss.backward()
        losses.append(loss.detach())
    assert torch.isfinite(losses[0])
    torch.testing.assert_close(losses[0], losses[1], atol=5e-2, rtol=5e-2)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if q.grad is None:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten().float(), q.grad.flatten().float(), dim=0)
        assert cos > 0.99 or q.grad.abs().max() < 1e-6, f"{name}: cosine {cos:.4f} seed={seed}"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    model.eval()
    with torch.no_grad():
        model.tokenize(images)
