"""The composed model beyond parity: attention semantics, gradient checkpointing, persistence, fusion, text."""

from __future__ import annotations

import pytest
import torch

import toklip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return toklip.build("toklip-test")


def images(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("k", [0, 17, 63])
def test_causal_mode_only_later_tokens_change(model, k):
    model.set_attention("causal")
    idx = torch.randint(0, model.vq.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    poked = idx.clone()
    poked[:, k] = (poked[:, k] + 1) % model.vq.vocab_size
    with torch.no_grad():
        a = model.tokenize_indices(idx).features
        b = model.tokenize_indices(poked).features
    assert torch.equal(a[:, :k], b[:, :k]), "tokens before k must be bit-identical"
    assert (a[:, k:] - b[:, k:]).abs().amax(dim=-1).min() > 0, "every token from k on must change"


def test_bidirectional_mode_mixes_everything(model):
    model.set_attention("bidirectional")
    try:
        idx = torch.randint(0, model.vq.vocab_size, (1, 64), generator=torch.Generator().manual_seed(2))
        poked = idx.clone()
        poked[:, 40] = (poked[:, 40] + 3) % model.vq.vocab_size
        with torch.no_grad():
            a = model.tokenize_indices(idx).features
            b = model.tokenize_indices(poked).features
        assert (a - b).abs().amax(dim=-1).min() > 0, "every token must see token 40"
    finally:
        model.set_attention("causal")


def test_gradient_checkpointing_keeps_the_causal_mask_and_the_gradients():
    torch.manual_seed(0)
    m = toklip.build("toklip-test").train()
    x = images()

    def run(ckpt):
        m.zero_grad(set_to_none=True)
        m.set_grad_checkpointing(ckpt)
        out = m.tokenize(x)
        loss = out.pooled.pow(2).sum() + out.features[:, :10].sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return out.features.detach(), grads

    f0, g0 = run(False)
    f1, g1 = run(True)
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not any(n.startswith("vq.") or n.startswith("text.") for n in g0), "VQ and text tower are frozen"


def test_eager_backend_matches_sdpa_and_never_produces_nan(model):
    x = images()
    with torch.no_grad():
        ref = model.tokenize(x)
        with toklip.attention_backend("eager"):
            eager = model.tokenize(x)
    torch.testing.assert_close(eager.features, ref.features, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(eager.features).all()


def test_eager_fully_masked_rows_are_zero_not_nan():
    from toklip.builtin.attn_backends import EagerBackend

    q = k = v = torch.randn(1, 2, 4, 8)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:, :] = True  # row 0 sees nothing
    out = EagerBackend()(q, k, v, causal=False, attn_mask=mask)
    assert torch.isfinite(out).all() and torch.equal(out[..., 0, :], torch.zeros_like(out[..., 0, :]))


def test_tokenize_indices_equals_tokenize(model):
    x = images()
    with torch.no_grad():
        a = model.tokenize(x)
        b = model.tokenize_indices(a.indices)
        c = model.tokenize_indices(a.indices.reshape(2, 8, 8))
    torch.testing.assert_close(b.features, a.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.pooled, b.pooled)


def test_train_mode_keeps_the_vq_in_eval(model):
    model.train()
    try:
        assert not model.vq.training and model.token_encoder.training
    finally:
        model.eval()


def test_save_and_from_pretrained_round_trip_exactly(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = toklip.from_pretrained(tmp_path / "m")
    sd_a, sd_b = model.state_dict(), again.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x), rtol=0, atol=0)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(toklip.WeightsNotFoundError, match="has no config.json"):
        toklip.from_pretrained(tmp_path)
    with pytest.raises(toklip.WeightsNotFoundError, match="neither a folder"):
        toklip.from_pretrained(tmp_path / "nope" / "deeper" / "x")


def test_encode_text_strings_work_offline(model):
    with torch.no_grad():
        a = model.encode_text(["a photo of a cat", "a dog"], normalize=True)
        b = model.encode_text("a photo of a cat", normalize=True)
    assert a.shape == (2, 64)
    torch.testing.assert_close(a[:1], b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("fusion,width", [("sum", 64), ("weighted_sum", 64), ("concat", 64)])
def test_fusions(fusion, width):
    m = toklip.build("toklip-test", fusion=fusion)
    with torch.no_grad():
        out = m.tokenize(images(1))
        fused = m.fuse(out)
    assert fused.shape == (1, 64, width)


def test_fusion_none_is_explicit():
    m = toklip.build("toklip-test", fusion=False)
    assert m.fusion is None and m.config.fusion is None
    with pytest.raises(toklip.ConfigError, match="fusion=None"):
        m.fuse(m.tokenize(images(1)))


def test_codebook_projector_and_its_memory_refusal():
    m = toklip.build("toklip-test", projector="codebook")
    assert m.projector.embedding.weight.shape == (1024, 64)
    from toklip.builtin.projectors import CodebookProjector

    with pytest.raises(toklip.ConfigError, match=r"262,144 x 1152 = 301,989,888 parameters \(1\.12 GiB in fp32"):
        CodebookProjector(code_dim=18, vocab_size=2**18, width=1152)


def test_get_logits_shapes_and_bias(model):
    with torch.no_grad():
        li, lt = model.get_logits(images(), ["a", "b", "c"])
    assert li.shape == (2, 3) and torch.equal(lt, li.T)
    assert model.logit_bias is not None and model.logit_bias.item() == -10.0


def test_preprocess_accepts_common_inputs(tmp_path, model):
    import numpy as np
    from PIL import Image

    arr = (np.random.default_rng(0).random((40, 90, 3)) * 255).astype(np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    a = model.preprocess(path)
    b = model.preprocess(path.read_bytes())
    c = model.preprocess(arr)
    d = model.preprocess(Image.fromarray(arr).convert("RGBA"))
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    gray = model.preprocess(Image.fromarray(arr[..., 0]))
    assert gray.shape == (3, 64, 64)


def llamagen_from_json(config=None, **kwargs):
    """A VQ factory described by a file or by keyword arguments, exposing `config_kwargs` (the kwargs that
    rebuild it) like the first-party plugins do."""
    import json

    from toklip.builtin.llamagen import build_llamagen

    if config is not None:
        kwargs = json.loads(open(config).read())
    vq = build_llamagen(**kwargs)
    vq.config_kwargs = kwargs
    return vq


def test_saved_folders_do_not_depend_on_config_files(tmp_path):
    import json

    sizes = {"ch": 32, "ch_mult": [1, 1, 2, 2], "z_channels": 32, "num_res_blocks": 1, "codebook_size": 64,
             "codebook_embed_dim": 8}
    cfg_file = tmp_path / "vq.json"
    cfg_file.write_text(json.dumps(sizes))

    class Plugin:
        @toklip.hookimpl
        def register_vq_tokenizers(self, register):
            register("filevq", "tests.test_model:llamagen_from_json")
            register("filevq-test", "tests.test_model:llamagen_from_json")

    with toklip.temp_plugin(Plugin(), name="filevq"):
        model = toklip.build("toklip-test", vq={"name": "filevq", "config": str(cfg_file)})
        model.save_pretrained(tmp_path / "saved")
        cfg_file.unlink()
        saved = json.loads((tmp_path / "saved" / "config.json").read_text())
        assert saved["vq"] == {"name": "filevq", **sizes}
        again = toklip.from_pretrained(tmp_path / "saved")
    assert again.vq.vocab_size == 64
