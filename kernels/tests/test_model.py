"""The composed TokLIP model on the Triton paths (attn_backend="triton", projector="mlp-fused-test") matches the
same weights on the reference paths (eager attention, PyTorch MLP), forward and backward, in both attention
modes and under gradient checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

import toklip

pytestmark = pytest.mark.triton_interpret


def _loss(model, images):
    out = model.tokenize(images)
    return out.pooled.pow(2).sum() + out.features.float().pow(2).mean(), out


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize(
    "attention,strategy,checkpointing",
    [("causal", "auto", False), ("bidirectional", "auto", False), ("causal", "codebook", True),
     ("bidirectional", "per_token", True)],
)
def test_triton_paths_match_reference(attention, strategy, checkpointing, images, device):
    fast = toklip.build("toklip-test", projector={"name": "mlp-fused-test", "strategy": strategy},
                        attn_backend="triton", attention=attention).to(device).train()
    ref = copy.deepcopy(fast)
    ref.projector.strategy = "reference"
    ref.set_attn_backend("eager")
    fast.set_grad_checkpointing(checkpointing)
    images = images.to(device)

    loss_fast, out_fast = _loss(fast, images)
    loss_ref, out_ref = _loss(ref, images)
    assert fast.projector.last_strategy == ("per_token" if strategy == "auto" else strategy)
    assert ref.projector.last_strategy == "reference"
    torch.testing.assert_close(out_fast.tokens, out_ref.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_fast.features, out_ref.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_fast.pooled, out_ref.pooled, atol=1e-4, rtol=1e-4)

    loss_fast.backward()
    loss_ref.backward()
    g_fast, g_ref = _grads(fast), _grads(ref)
    assert g_fast.keys() == g_ref.keys()
    assert any(n.startswith("projector.fc1") for n in g_fast) and any(".attn.qkv." in n for n in g_fast)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], atol=1e-4, rtol=1e-3, msg=name)


def test_training_step_and_frozen_inference_cache(images, device):
    """A training step on the Triton paths, then eval: the cached codebook table follows the new weights."""
    model = toklip.build("toklip-test", projector={"name": "mlp-fused-test", "strategy": "codebook"},
                         attn_backend="triton").to(device).train()
    images = images.to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits_i, _ = model.get_logits(images, ["a red square", "a blue circle"])
    torch.nn.functional.cross_entropy(logits_i, torch.arange(2, device=device)).backward()
    before = model.projector.fc2.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.projector.fc2.weight)

    model.eval()
    with torch.no_grad():
        first = model.tokenize(images)
        assert model.projector.last_strategy == "codebook"
        table = model.projector._cache.table
        again = model.tokenize(images)
        assert model.projector._cache.table is table, "the table must be reused while the weights are unchanged"
    torch.testing.assert_close(first.tokens, again.tokens)
    ref = copy.deepcopy(model)
    ref.projector.strategy = "reference"
    ref.set_attn_backend("eager")
    with torch.no_grad():
        want = ref.tokenize(images)
    torch.testing.assert_close(first.tokens, want.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.pooled, want.pooled, atol=1e-4, rtol=1e-4)
