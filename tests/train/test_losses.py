"""TokLIP's training loss against the official fixture, plus the SigLIP, all-token and clamp options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from toklip.core.errors import ConfigError
from toklip.train.losses import LOGIT_SCALE_MAX, LossConfig, TokLIPLoss, clamp_logit_scale, match_token_grid


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope="module")
def vectors():
    from tests.conftest import FIXTURES

    return load_file(str(FIXTURES / "official-toklip" / "vectors.safetensors"))


def _inputs(vectors):
    img = vectors["loss_inputs.image_features"].clone().requires_grad_(True)
    txt = vectors["loss_inputs.text_features"].clone().requires_grad_(True)
    scale_log = vectors["loss_inputs.logit_scale_log"].clone().requires_grad_(True)
    teacher = vectors["loss_inputs.teacher_image_features"].clone().requires_grad_(True)
    return img, txt, scale_log, teacher


def test_loss_matches_the_official_values_and_gradients(vectors):
    img, txt, scale_log, teacher = _inputs(vectors)
    assert torch.allclose(scale_log.exp(), vectors["loss_inputs.logit_scale"])
    losses = TokLIPLoss()(img, txt, scale_log.exp(), teacher_features=teacher)
    assert set(losses) == {"contrastive_loss", "distill_loss"}
    total = sum(losses.values())
    assert rel(losses["contrastive_loss"], vectors["loss_outputs.contrastive_loss"]) <= 1e-5
    assert rel(losses["distill_loss"], vectors["loss_outputs.distill_loss"]) <= 1e-5
    assert rel(total, vectors["loss_outputs.total_loss"]) <= 1e-5
    total.backward()
    assert rel(img.grad, vectors["loss_grads.image_features"]) <= 1e-4
    assert rel(txt.grad, vectors["loss_grads.text_features"]) <= 1e-4
    assert rel(scale_log.grad, vectors["loss_grads.logit_scale_log"]) <= 1e-4
    assert teacher.grad is None  # the teacher is a detached target


def test_every_term_carries_its_weight(vectors):
    img, txt, scale_log, teacher = _inputs(vectors)
    base = TokLIPLoss()(img, txt, scale_log.exp(), teacher_features=teacher)
    cfg = LossConfig(contrastive_weight=2.0, distill_weight=10.0)
    weighted = TokLIPLoss(cfg)(img, txt, scale_log.exp(), teacher_features=teacher)
    assert torch.allclose(weighted["contrastive_loss"], 2 * base["contrastive_loss"])
    assert torch.allclose(weighted["distill_loss"], base["distill_loss"] / 100)
    only = TokLIPLoss(LossConfig(distill_weight=0))(img, txt, scale_log.exp())
    assert set(only) == {"contrastive_loss"}
    with pytest.raises(ConfigError, match="teacher"):
        TokLIPLoss()(img, txt, scale_log.exp())
    with pytest.raises(ConfigError, match="differ in shape"):
        TokLIPLoss()(img, txt, scale_log.exp(), teacher_features=teacher[:, :32])


def test_siglip_loss_is_the_sigmoid_loss_with_a_trainable_bias(vectors):
    img, txt, scale_log, _ = _inputs(vectors)
    bias = torch.tensor(-7.25, requires_grad=True)
    loss = TokLIPLoss(LossConfig(contrastive="siglip", distill_weight=0))
    assert loss.needs_bias and not TokLIPLoss().needs_bias
    got = loss(img, txt, scale_log.exp(), logit_bias=bias)["contrastive_loss"]
    logits = scale_log.exp() * img @ txt.T + bias
    labels = 2 * torch.eye(len(img)) - 1
    ref = -F.logsigmoid(labels * logits).sum() / len(img)
    assert rel(got, ref) <= 1e-6
    (g_bias,) = torch.autograd.grad(got, bias)
    (r_bias,) = torch.autograd.grad(ref, bias)
    assert g_bias.abs() > 0 and torch.allclose(g_bias, r_bias)
    with pytest.raises(ConfigError, match="logit_bias"):
        loss(img, txt, scale_log.exp())


def _token_target(teacher_tokens, grid):
    b, n, d = teacher_tokens.shape
    side = math.isqrt(n)
    x = teacher_tokens.transpose(1, 2).reshape(b, d, side, side)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False).reshape(b, d, -1).transpose(1, 2)


def test_all_token_distillation_interpolates_the_teacher_grid():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(2, 8), dim=-1)
    txt = F.normalize(torch.randn(2, 8), dim=-1)
    tokens = torch.randn(2, 64, 16, requires_grad=True)  # student 8x8
    teacher = torch.randn(2, 16, 16, requires_grad=True)  # teacher 4x4
    loss = TokLIPLoss(LossConfig(contrastive_weight=0, distill_weight=0, token_distill_weight=3.0))
    out = loss(img, txt, torch.tensor(10.0), tokens=tokens, teacher_tokens=teacher)
    assert set(out) == {"token_distill_loss"}
    ref = 3.0 * F.mse_loss(F.normalize(tokens, dim=-1), F.normalize(_token_target(teacher.detach(), (8, 8)), dim=-1))
    assert rel(out["token_distill_loss"], ref) <= 1e-6
    out["token_distill_loss"].backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert teacher.grad is None

    same = torch.randn(2, 64, 16)  # same grid: no resampling
    got = loss(img, txt, torch.tensor(10.0), tokens=tokens, teacher_tokens=same)["token_distill_loss"]
    assert rel(got, 3.0 * F.mse_loss(F.normalize(tokens, dim=-1), F.normalize(same, dim=-1))) <= 1e-6
    assert match_token_grid(same, (8, 8)) is same

    rect = loss(img, txt, torch.tensor(10.0), tokens=tokens[:, :32], teacher_tokens=teacher, grid=(4, 8))
    assert torch.isfinite(rect["token_distill_loss"])
    with pytest.raises(ConfigError, match="square grid"):
        loss(img, txt, torch.tensor(10.0), tokens=tokens, teacher_tokens=torch.randn(2, 15, 16))
    with pytest.raises(ConfigError, match="square grid"):
        loss(img, txt, torch.tensor(10.0), tokens=tokens[:, :32], teacher_tokens=teacher)
    with pytest.raises(ConfigError, match="width"):
        loss(img, txt, torch.tensor(10.0), tokens=tokens, teacher_tokens=torch.randn(2, 16, 24))
    with pytest.raises(ConfigError, match="per-token"):
        loss(img, txt, torch.tensor(10.0), tokens=tokens)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"contrastive": "sigmoid"}, "loss.contrastive must be one of"),
        ({"distill_weight": -1.0}, "loss.distill_weight must be a finite number >= 0"),
        ({"contrastive_weight": float("nan")}, "loss.contrastive_weight must be a finite number"),
        ({"token_distill_weight": float("inf")}, "loss.token_distill_weight must be a finite number"),
        ({"distill_weight": "1000"}, "loss.distill_weight must be a finite number"),
        ({"distill_weight": True}, "loss.distill_weight must be a finite number"),
        ({"contrastive_weight": 0, "distill_weight": 0}, "every loss weight is 0"),
    ],
)
def test_loss_weight_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TokLIPLoss(LossConfig(**kwargs))


def test_clamp_logit_scale_keeps_it_in_0_ln100():
    m = torch.nn.Module()
    for start, want in [(10.0, LOGIT_SCALE_MAX), (-1.0, 0.0), (2.0, 2.0)]:
        m.logit_scale = torch.nn.Parameter(torch.tensor(start))
        clamp_logit_scale(m)
        assert m.logit_scale.item() == pytest.approx(want)
        assert m.logit_scale.requires_grad
    assert LOGIT_SCALE_MAX == pytest.approx(math.log(100))
    clamp_logit_scale(torch.nn.Linear(2, 2))  # no logit_scale: nothing to do
