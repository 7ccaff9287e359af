"""DFN / OpenAI-style CLIP encoders: open_clip's weights mapped onto timm blocks must give open_clip's outputs."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip.builtin.dfn import DFNEncoder


@pytest.fixture(scope="module")
def open_clip_model():
    from open_clip.model import CLIP

    cfg = DFNEncoder.TINY_CONFIGS["dfn-test"]
    torch.manual_seed(0)
    model = CLIP(cfg["embed_dim"], dict(cfg["vision_cfg"]), dict(cfg["text_cfg"]), quick_gelu=True).eval()
    with torch.no_grad():  # move every parameter away from its init so a wrong mapping cannot hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def checkpoint(open_clip_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("dfn") / "open_clip_pytorch_model.bin"
    torch.save(open_clip_model.state_dict(), path)
    return path


def test_teacher_and_text_equal_open_clip(open_clip_model, checkpoint):
    enc = DFNEncoder("dfn-test", pretrained=str(checkpoint))
    teacher = enc.build_teacher()
    text = enc.build_text_tower().eval()
    images = torch.randn(2, 3, 64, 64)
    ids = enc.build_tokenizer()(["a photo of a cat", "a diagram of a house"])
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), open_clip_model.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text(ids), open_clip_model.encode_text(ids), rtol=1e-5, atol=1e-5)
    scale, _ = enc.logit_init()
    assert scale == pytest.approx(open_clip_model.logit_scale.item())


def test_class_token_goes_last_and_bidirectional_matches_the_teacher(open_clip_model, checkpoint):
    """With the class token appended last (its position row moved with it) and bidirectional attention, the
    token encoder fed the teacher's own patch embeddings computes exactly the teacher's embedding."""
    enc = DFNEncoder("dfn-test", pretrained=str(checkpoint))
    teacher = enc.build_teacher()
    te = enc.build_token_encoder((8, 8)).eval()
    assert te.cls_token is not None and te.pos_embed.shape == (1, 65, 64)
    torch.testing.assert_close(te.pos_embed[:, -1], teacher.pos_embed[:, 0])
    torch.testing.assert_close(te.pos_embed[:, :-1], teacher.pos_embed[:, 1:])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        patches = teacher.patch_embed(images)
        pooled = te.pool(te.forward_features(patches, causal=False))
        torch.testing.assert_close(pooled, teacher(images), rtol=1e-5, atol=1e-5)
        causal = te.pool(te.forward_features(patches, causal=True))  # the last token sees everything
        assert torch.isfinite(causal).all()


def test_composed_model_with_dfn(checkpoint):
    model = toklip.build(vq="llamagen-test", encoder={"name": "dfn-test", "pretrained": str(checkpoint)})
    assert model.image_size == 64 and model.teacher_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    with torch.no_grad():
        out = model.tokenize(torch.rand(2, 3, 64, 64) * 2 - 1)
        sims = model.encode_image(torch.rand(1, 3, 64, 64) * 2 - 1, normalize=True) @ \
            model.encode_text(["a cat", "a dog"], normalize=True).T
    assert out.features.shape == (2, 64, 64) and out.pooled.shape == (2, 64) and sims.shape == (1, 2)


def test_the_432_pixel_grid_trick():
    """ViT-H/14 at 378 px has a 27x27 grid: with LlamaGen VQ-16 TokLIP takes 27 * 16 = 432 px, so the
    pretrained position embeddings copy over without interpolation (checked on the meta device)."""
    model = toklip.build(vq="llamagen", encoder="dfn", device="meta")
    assert model.grid == (27, 27) and model.image_size == 432
    assert model.token_encoder.pos_embed.shape == (1, 27 * 27 + 1, 1280)
    assert model.token_encoder.embed_dim == 1024


def test_timm_trunk_models_are_refused():
    with pytest.raises(toklip.ConfigError, match="use a siglip2 encoder"):
        DFNEncoder("ViT-SO400M-16-SigLIP2-256")


def test_teacher_inputs_renormalise_from_the_vq_range():
    model = toklip.build(vq="llamagen-test", encoder="dfn-test")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    y = model.teacher_inputs(x)
    mean = torch.tensor(model.teacher_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.teacher_std).view(1, 3, 1, 1)
    torch.testing.assert_close(y * std + mean, (x + 1) / 2)
    siglip = toklip.build("toklip-test")
    assert siglip.teacher_inputs(x) is x
