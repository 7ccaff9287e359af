"""Parity with the official Open-MAGVIT2 code, through the fixture vectors (see tests/fixtures/README.md).

The fixture was made by the official ``VQModel`` with random weights: ``model.ckpt`` is a Lightning checkpoint
whose raw ``encoder.*``/``decoder.*`` weights differ from its ``model_ema.*`` shadows, and inference uses the EMA.
Tolerance: indices and codes exact, floats 1e-5 (fp32, CPU).
"""

from __future__ import annotations

import pytest
import torch

import toklip

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def tokenizer():
    from pathlib import Path

    from toklip_plugin_magvit2.model import build_magvit2

    fx = Path(__file__).parent / "fixtures"
    return build_magvit2(config=fx / "config.json", checkpoint=fx / "model.ckpt")


def test_encode_matches_official(tokenizer, vectors):
    with torch.no_grad():
        enc = tokenizer.encode(vectors["image"])
    assert tokenizer.loaded_weights == "ema"
    torch.testing.assert_close(enc.latent, vectors["latent"], **TOL)
    assert enc.indices.dtype == torch.int64 and enc.indices.shape == (2, 4, 4)
    assert torch.equal(enc.indices.reshape(2, -1), vectors["indices_bn"])
    assert torch.equal(enc.indices.flatten(), vectors["indices"])  # the official flat [B*h*w] order
    assert enc.codes.dtype == torch.float32
    assert torch.equal(enc.codes.reshape(2, 16, 18), vectors["codes"])
    assert torch.equal(enc.codes.permute(0, 3, 1, 2), vectors["quant"])


def test_indices_to_codes_is_the_official_bit_rule(tokenizer, vectors):
    assert torch.equal(tokenizer.indices_to_codes(vectors["indices_bn"]), vectors["codes"])
    # channel 0 is the least-significant bit
    one_hot = tokenizer.indices_to_codes(torch.tensor([1, 2, 2**17]))
    assert one_hot[0, 0] == 1 and (one_hot[0, 1:] == -1).all()
    assert one_hot[1, 1] == 1 and one_hot[1, 0] == -1
    assert one_hot[2, 17] == 1 and (one_hot[2, :17] == -1).all()


def test_zero_latent_quantises_to_minus_one():
    from toklip_plugin_magvit2 import lfq

    idx, codes = lfq.quantize(torch.tensor([0.0, 1e-30, -1e-30]).view(1, 3, 1, 1))
    assert codes.flatten().tolist() == [-1.0, 1.0, -1.0]
    assert idx.item() == 2


def test_decode_matches_official(tokenizer, vectors):
    with torch.no_grad():
        from_indices = tokenizer.decode(vectors["indices_bn"])
        from_grid = tokenizer.decode(vectors["indices_bn"].reshape(2, 4, 4))
    torch.testing.assert_close(from_indices, vectors["decoded_from_indices"], **TOL)
    torch.testing.assert_close(from_indices, vectors["decoded"], **TOL)
    assert torch.equal(from_indices, from_grid)
    # the raw (non-EMA) weights give a different image: the loader must not pick them
    assert (from_indices - vectors["decoded_raw_weights"]).abs().max() > 0.1


def test_raw_weights_on_request(fixtures, vectors):
    from toklip_plugin_magvit2.model import build_magvit2

    raw = build_magvit2(config=fixtures / "config.json", checkpoint=fixtures / "model.ckpt", weights="raw")
    assert raw.loaded_weights == "raw"
    with torch.no_grad():
        out = raw.decode(raw.encode(vectors["image"]).indices)
    torch.testing.assert_close(out, vectors["decoded_raw_weights"], **TOL)


def test_factorized_indices(tokenizer, vectors):
    pre, post = tokenizer.factorize_indices(vectors["indices_bn"])
    assert torch.equal(pre, vectors["indices_factorized_pre"])
    assert torch.equal(post, vectors["indices_factorized_post"])
    from toklip_plugin_magvit2.lfq import unfactorize

    assert torch.equal(unfactorize(pre, post, 9), vectors["indices_bn"])


def test_fixture_contract_through_toklip_build(fixtures, vectors):
    """The documented call: toklip.build(vq={"name": "magvit2", "config": ..., "checkpoint": ...})."""
    model = toklip.build(
        vq={"name": "magvit2", "config": str(fixtures / "config.json"), "checkpoint": str(fixtures / "model.ckpt")},
        encoder="siglip2-test",
        image_size=64,
    )
    assert model.projector.fc1.in_features == 18  # the MLP projector adapts to 18-bit codes
    assert model.vq.vocab_size == 2**18
    with torch.no_grad():
        out = model.tokenize(vectors["image"])
    assert torch.equal(out.indices, vectors["indices_bn"])
    assert torch.equal(out.codes, vectors["codes"])
    assert out.pooled.shape[0] == 2 and torch.isfinite(out.pooled).all()
    with torch.no_grad():
        torch.testing.assert_close(model.decode(out.indices), vectors["decoded"], **TOL)


def test_pretrained_local_path_loads_the_release_file(fixtures, vectors):
    """Core resolves pretrained= to a local file before calling the factory; a path must load like checkpoint=."""
    model = toklip.build(
        vq={"name": "magvit2", "config": str(fixtures / "config.json"), "pretrained": str(fixtures / "model.ckpt")},
        encoder="siglip2-test",
        image_size=64,
    )
    with torch.no_grad():
        assert torch.equal(model.vq.encode(vectors["image"]).indices.reshape(2, -1), vectors["indices_bn"])


def test_safetensors_and_plain_state_dicts_load(tmp_path, fixtures, vectors, tokenizer):
    from safetensors.torch import save_file

    from toklip.weights import read_checkpoint
    from toklip_plugin_magvit2.model import build_magvit2

    # the Lightning layout (raw + EMA keys) as safetensors
    lightning = read_checkpoint(fixtures / "model.ckpt")["state_dict"]
    save_file({k: v.contiguous() for k, v in lightning.items()}, str(tmp_path / "lightning.safetensors"))
    a = build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "lightning.safetensors")
    # the tokenizer's own state dict (what toklip writes), which has no EMA keys
    save_file(tokenizer.state_dict(), str(tmp_path / "own.safetensors"))
    b = build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "own.safetensors")
    assert (a.loaded_weights, b.loaded_weights) == ("ema", "raw")
    with torch.no_grad():
        for m in (a, b):
            assert torch.equal(m.encode(vectors["image"]).indices.reshape(2, -1), vectors["indices_bn"])
