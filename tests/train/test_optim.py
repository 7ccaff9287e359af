"""AdamW with open_clip's weight-decay rule, and the warmup + cosine / const learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

import toklip
from toklip.core.errors import ConfigError
from toklip.train.config import OptimConfig
from toklip.train.losses import TokLIPLoss
from toklip.train.optim import Schedule, build_optimizer, excluded_from_decay, lr_at, param_groups
from toklip.train.step import StudentForward
from toklip.train.toklip_task import prepare_for_training


@pytest.fixture(scope="module")
def student():
    model = toklip.build("toklip-test")
    prepare_for_training(model, TokLIPLoss(), lock_text=True)
    return StudentForward(model)


def _groups_by_name(module, optimizer):
    names = {id(p): n for n, p in module.named_parameters()}
    return {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}


def test_adamw_hyperparameters_and_decay_groups(student):
    opt = build_optimizer(student, OptimConfig())
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.95) and g["eps"] == 1e-6 and g["lr"] == 1e-5
    groups = _groups_by_name(student, opt)
    assert set(groups) == {0.0, 0.1}
    decay, no_decay = groups[0.1], groups[0.0]
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    expected_decay = {
        "model.projector.fc1.weight", "model.projector.fc2.weight", "model.token_encoder.pos_embed",
        "model.token_encoder.attn_pool.latent", "model.token_encoder.attn_pool.q.weight",
        "model.token_encoder.attn_pool.kv.weight", "model.token_encoder.attn_pool.proj.weight",
        "model.token_encoder.attn_pool.mlp.fc1.weight", "model.token_encoder.attn_pool.mlp.fc2.weight",
    } | {f"model.token_encoder.blocks.{i}.{w}.weight" for i in range(2)
         for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert decay == expected_decay
    assert "model.logit_scale" in no_decay
    assert "model.token_encoder.blocks.0.norm1.weight" in no_decay  # LayerNorm
    assert "model.token_encoder.norm.bias" in no_decay
    assert "model.token_encoder.attn_pool.norm.weight" in no_decay
    assert all(n.endswith(".bias") or "norm" in n or n == "model.logit_scale" for n in no_decay)
    assert not any(n.startswith(("model.vq.", "model.text.", "model.fusion.")) or n == "model.logit_bias"
                   for n in decay | no_decay)


def test_weight_decay_is_decoupled_and_only_on_the_decay_group(student):
    params = [p for p in student.parameters() if p.requires_grad]
    before = {id(p): p.detach().clone() for p in params}
    opt = build_optimizer(student, OptimConfig(lr=0.5, weight_decay=0.1))
    for p in params:
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decoupled decay moves weights
    opt.step()
    decay = {id(p) for p in opt.param_groups[1]["params"]}
    try:
        for p in params:
            factor = 1 - 0.5 * 0.1 if id(p) in decay else 1.0
            assert torch.allclose(p.detach(), before[id(p)] * factor, rtol=1e-6, atol=0), p.shape
    finally:
        with torch.no_grad():
            for p in params:
                p.copy_(before[id(p)])
                p.grad = None


def test_decay_rule_is_open_clips():
    w2 = torch.zeros(2, 2)
    assert not excluded_from_decay("blocks.0.mlp.fc1.weight", w2)
    assert excluded_from_decay("blocks.0.mlp.fc1.bias", torch.zeros(2))
    assert excluded_from_decay("text.ln_final.weight", torch.zeros(2))
    assert excluded_from_decay("text.ln_proj.weight", w2)  # name-based, as open_clip's exclude lambda
    assert excluded_from_decay("bn1.weight", w2)
    assert excluded_from_decay("logit_scale", torch.zeros(()))
    assert not excluded_from_decay("pos_embed", torch.zeros(1, 4, 2))
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups([("w", torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False))], 0.1)


def test_warmup_then_cosine_exact_values():
    kw = dict(base_lr=1e-3, warmup=4, total=10)
    assert lr_at(0, **kw) == pytest.approx(2.5e-4)
    assert lr_at(1, **kw) == pytest.approx(5e-4)
    assert lr_at(3, **kw) == pytest.approx(1e-3)
    assert lr_at(4, **kw) == pytest.approx(1e-3)
    assert lr_at(5, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)) * 1e-3)
    assert lr_at(7, **kw) == pytest.approx(0.5e-3)
    assert lr_at(9, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)) * 1e-3)
    assert lr_at(10, **kw) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(50, **kw) == pytest.approx(0.0, abs=1e-15)  # past the end: stays at min_lr
    assert lr_at(7, **kw, min_lr=1e-4) == pytest.approx(1e-4 + 0.5 * 0.9e-3)
    assert lr_at(10, **kw, min_lr=1e-4) == pytest.approx(1e-4)
    assert lr_at(0, base_lr=1e-3, warmup=0, total=10) == pytest.approx(1e-3)


def test_const_schedule():
    kw = dict(base_lr=2e-4, warmup=2, total=10, schedule="const")
    assert [lr_at(s, **kw) for s in range(5)] == pytest.approx([1e-4, 2e-4, 2e-4, 2e-4, 2e-4])
    assert lr_at(100, **kw) == pytest.approx(2e-4)


def test_schedule_sets_every_group_and_warns_when_warmup_never_ends():
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW(param_groups([("w", params[0]), ("b", params[1])], 0.1), lr=1.0)
    sched = Schedule(opt, OptimConfig(lr=1e-3, warmup=4), total_steps=10)
    assert sched.apply(7) == pytest.approx(0.5e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5e-3, 0.5e-3])
    assert sched.state_dict()["total"] == 10
    with pytest.warns(UserWarning, match="never leaves warmup"):
        Schedule(opt, OptimConfig(lr=1e-3, warmup=10), total_steps=10)
