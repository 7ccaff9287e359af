"""One training step against the official fixture, the trainable split, gradient checkpointing, the loss
options through the model, and a clean stop on a non-finite loss."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import toklip
from toklip.weights.official import official_to_toklip_key
from toklip.core.errors import ConfigError
from toklip.train.losses import LossConfig, TokLIPLoss
from toklip.train.step import StudentForward
from toklip.train.toklip_task import prepare_for_training

FIX = "official-toklip"
GRAD = "train_step.grad."


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope="module")
def vectors():
    from tests.conftest import FIXTURES

    return load_file(str(FIXTURES / FIX / "vectors.safetensors"))


@pytest.fixture(scope="module")
def _official():
    from tests.conftest import FIXTURES

    d = FIXTURES / FIX
    model = toklip.load_official(d / "official_state.pt", config=d / "config.json")
    # the fixture's text tower has no real tokenizer (ids are given); training only checks that one exists
    model.tokenizer = lambda texts: None
    return model


@pytest.fixture
def official(_official):
    return copy.deepcopy(_official)


def _teacher_features(model, images):
    """The fixture's stand-in teacher: the same weights run bidirectionally under no_grad."""
    teacher = copy.deepcopy(model).set_attention("bidirectional").eval()
    with torch.no_grad():
        return F.normalize(teacher.encode_image(images), dim=-1)


def test_train_step_matches_the_official_step(official, vectors):
    torch.set_num_threads(1)
    model, images = official, vectors["image"]
    b = images.shape[0]
    teacher = _teacher_features(model, images)
    loss = TokLIPLoss()
    prepare_for_training(model, loss, lock_text=True)
    model.eval()  # the fixture step ran in eval mode (numerically the same as train mode here)

    official_grads = {k[len(GRAD):]: v for k, v in vectors.items() if k.startswith(GRAD)}
    assert len(official_grads) == 45
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {official_to_toklip_key(k) for k in official_grads}

    out = StudentForward(model)(images, vectors["text_ids"][:b])
    assert out["logit_bias"] is None and out["tokens"] is None
    assert not out["text_features"].requires_grad  # locked text tower: no graph through it
    assert rel(out["image_features"], vectors["train_step.image_features"]) <= 1e-4
    assert rel(out["text_features"], vectors["train_step.text_features"]) <= 1e-4
    assert rel(teacher, vectors["train_step.teacher_image_features"]) <= 1e-4
    losses = loss(out["image_features"], out["text_features"], out["logit_scale"], teacher_features=teacher)
    total = sum(losses.values())
    assert rel(losses["contrastive_loss"], vectors["train_step.contrastive_loss"]) <= 1e-4
    assert rel(losses["distill_loss"], vectors["train_step.distill_loss"]) <= 1e-4
    assert rel(total, vectors["train_step.total_loss"]) <= 1e-4
    total.backward()
    params = dict(model.named_parameters())
    for name, ref in official_grads.items():
        grad = params[official_to_toklip_key(name)].grad
        assert grad is not None, name
        assert grad.shape == ref.shape, name
        assert rel(grad, ref) <= 1e-4, f"{name}: {rel(grad, ref):.2e}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen == []


def test_siglip_loss_trains_the_bias_too(official, vectors):
    model, images = official, vectors["image"]
    b = images.shape[0]
    loss = TokLIPLoss(LossConfig(contrastive="siglip", distill_weight=0))
    prepare_for_training(model, loss, lock_text=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "logit_bias" in trainable and len(trainable) == 46
    out = StudentForward(model, use_bias=loss.needs_bias)(images, vectors["text_ids"][:b])
    assert out["logit_bias"] is model.logit_bias
    con = loss(out["image_features"], out["text_features"], out["logit_scale"],
               logit_bias=out["logit_bias"])["contrastive_loss"]
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T + model.logit_bias
    ref = -F.logsigmoid((2 * torch.eye(b) - 1) * logits).sum() / b
    assert rel(con, ref) <= 1e-6
    con.backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0
    assert model.logit_scale.grad is not None

    clip = TokLIPLoss()
    prepare_for_training(model, clip, lock_text=True)  # the CLIP loss freezes the bias again
    assert not model.logit_bias.requires_grad
    no_bias = copy.deepcopy(model)
    no_bias.logit_bias = None
    with pytest.raises(ConfigError, match="siglip.*logit_bias"):
        prepare_for_training(no_bias, loss, lock_text=True)


def test_all_token_distillation_needs_a_bidirectional_student(official, vectors):
    loss = TokLIPLoss(LossConfig(token_distill_weight=1.0))
    with pytest.raises(ConfigError, match="needs model.attention=bidirectional"):
        prepare_for_training(official, loss, lock_text=True)
    model = official.set_attention("bidirectional")
    prepare_for_training(model, loss, lock_text=True)
    images, b = vectors["image"], vectors["image"].shape[0]
    out = StudentForward(model, return_tokens=True)(images, vectors["text_ids"][:b])
    assert out["tokens"].shape == (b, 64, 64)
    with torch.no_grad():  # a teacher on a coarser 4x4 grid, as a lower-resolution teacher would give
        teacher_tokens = F.avg_pool2d(out["tokens"].transpose(1, 2).reshape(b, 64, 8, 8), 2).flatten(2).transpose(1, 2)
    losses = loss(out["image_features"], out["text_features"], out["logit_scale"],
                  teacher_features=out["image_features"].detach(), tokens=out["tokens"], teacher_tokens=teacher_tokens)
    assert set(losses) == {"contrastive_loss", "distill_loss", "token_distill_loss"}
    assert 0 < losses["token_distill_loss"] < 1
    sum(losses.values()).backward()
    assert model.token_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def _step(model, indices, ids, teacher):
    """Loss and gradients of one step from VQ indices (the token-encoder path the checkpointing covers)."""
    model.zero_grad(set_to_none=True)
    out = model.tokenize_indices(indices)
    image = F.normalize(out.pooled, dim=-1)
    text = model.encode_text(ids, normalize=True)
    losses = TokLIPLoss()(image, text, model.logit_scale.exp(), teacher_features=teacher)
    total = sum(losses.values())
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.detach(), grads, out.features.detach()


def test_gradient_checkpointing_keeps_the_causal_mask():
    torch.manual_seed(0)
    model = toklip.build("toklip-test")
    prepare_for_training(model, TokLIPLoss(), lock_text=True)
    model.train()
    indices = torch.randint(0, model.vq.vocab_size, (3, 64))
    ids = torch.randint(2, 100, (3, model.context_length))
    teacher = torch.randn(3, model.token_encoder.embed_dim)
    calls = []
    for block in model.token_encoder.blocks:
        block.register_forward_pre_hook(lambda *a: calls.append(1))

    loss_ref, grads_ref, feats_ref = _step(model, indices, ids, teacher)
    assert len(calls) == 2
    model.set_grad_checkpointing(True)
    calls.clear()
    loss_gc, grads_gc, feats_gc = _step(model, indices, ids, teacher)
    assert len(calls) == 4  # each block recomputed in backward: checkpointing is really on
    assert torch.allclose(loss_gc, loss_ref, rtol=1e-6, atol=0)
    assert torch.equal(feats_gc, feats_ref)
    assert set(grads_gc) == set(grads_ref) and len(grads_ref) == 45
    for name in grads_ref:
        assert torch.allclose(grads_gc[name], grads_ref[name], rtol=1e-5, atol=1e-7), name

    # the mask matters here, so a recomputation without it would have shown up above
    loss_bi, grads_bi, feats_bi = _step(model.set_attention("bidirectional"), indices, ids, teacher)
    assert (feats_bi - feats_ref).abs().max() > 1e-3
    assert not torch.allclose(grads_bi["token_encoder.blocks.0.attn.qkv.weight"],
                              grads_ref["token_encoder.blocks.0.attn.qkv.weight"], rtol=1e-3)
    assert not torch.allclose(loss_bi, loss_ref)


# ---------------------------------------------------------------------------------------------- the trainer
def _image_folder(root, n=6):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"a photo of thing {i}")
    return root


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    from toklip.train import checkpoint as ckpt
    from toklip.train.config import TrainConfig
    from toklip.train.trainer import Trainer, TrainingError

    data = _image_folder(tmp_path / "data")
    out_dir = tmp_path / "run"
    cfg = TrainConfig.load(None, [
        "model.preset=toklip-test", f"data.path={data}", "data.batch_size=2", "data.workers=0",
        "train.steps=5", f"train.out_dir={out_dir}", "train.ckpt_every=2", "train.progress=false",
        "optim.warmup=1", "optim.lr=1e-3",
    ])
    model = toklip.build("toklip-test")
    with torch.no_grad():
        model.logit_scale.fill_(4.7)  # above ln(100): the post-step clamp must bring it down
    calls = {"n": 0}
    original = TokLIPLoss.forward

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(TokLIPLoss, "forward", poisoned)
    before_nan = {}

    def keep(self, batch, _orig=Trainer._train_step):
        if calls["n"] == 2:
            before_nan.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return _orig(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", keep)
    with pytest.raises(TrainingError) as err:
        Trainer(cfg, model=model, echo=lambda s: None).fit()
    good = ckpt.checkpoint_root(out_dir) / ckpt.step_dir_name(2)
    msg = str(err.value)
    assert "at step 3" in msg and str(good) in msg and "nan" in msg
    assert calls["n"] == 3

    # the model was not updated by the broken step, and the clamp ran after every good one
    after = model.state_dict()
    assert all(torch.equal(after[k], before_nan[k]) for k in before_nan)
    assert model.logit_scale.item() <= math.log(100) + 1e-6
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(r["logit_scale"] <= 100 + 1e-3 and math.isfinite(r["loss"]) for r in lines)

    # the last good checkpoint is whole and is the one `latest` points at
    assert sorted(p.name for p in ckpt.checkpoint_root(out_dir).iterdir()) == ["latest", good.name]
    assert ckpt.find_checkpoint(out_dir, "latest") == good
    state = json.loads((good / ckpt.STATE_NAME).read_text())
    assert state["step"] == 2
    loaded = toklip.from_pretrained(good)
    saved = loaded.state_dict()
    assert all(torch.equal(saved[k], before_nan[k]) for k in before_nan if k in saved)
    assert loaded.logit_scale.item() <= math.log(100) + 1e-6
