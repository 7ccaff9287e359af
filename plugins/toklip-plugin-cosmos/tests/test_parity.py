"""Parity with the official Cosmos DI code through the fixture (encoder.jit / decoder.jit as released, and the
vectors the official modules produced). Indices and codes exact; floats within 1e-5 of the output scale.

The .jit files are only read (see toklip_plugin_cosmos.torchscript), never run: torch.jit.load is blocked here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import toklip
from toklip_plugin_cosmos.model import CosmosDITokenizer, build_cosmos

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE = [FIXTURES / "encoder.jit", FIXTURES / "decoder.jit"]


def assert_close_to_scale(actual, expected, rel=1e-5):
    """max |actual - expected| <= rel * max |expected| (the official code itself moves ~2e-6 of the scale
    between 1 and 2 threads on this random-weight decoder)."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} exceeds {rel:g} x output scale {scale:.3g}"


@pytest.fixture(autouse=True)
def _no_torchscript_execution(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load must never be called")

    monkeypatch.setattr(torch.jit, "load", refuse)


@pytest.fixture(scope="module")
def tokenizer():
    return build_cosmos(config=FIXTURES / "config.json", checkpoint=RELEASE)


def test_encode_matches_official(tokenizer, vectors):
    with torch.no_grad():
        assert_close_to_scale(tokenizer.encoder(vectors["image"]), vectors["encoder_out"])
        enc = tokenizer.encode(vectors["image"])
    assert_close_to_scale(enc.latent, vectors["latent"])
    assert enc.indices.dtype == torch.int64 and torch.equal(enc.indices, vectors["indices"])
    assert torch.equal(enc.indices.reshape(2, -1), vectors["indices_bn"])
    assert enc.codes.dtype == torch.float32
    assert torch.equal(enc.codes.reshape(2, 16, 6), vectors["codes"])
    assert torch.equal(enc.codes.permute(0, 3, 1, 2), vectors["quant"])


def test_decode_matches_official(tokenizer, vectors):
    with torch.no_grad():
        out = tokenizer.decode(vectors["indices"])
        flat = tokenizer.decode(vectors["indices_bn"])
        int32 = tokenizer.decode(vectors["indices_int32"])  # the official dtype is accepted too
    assert_close_to_scale(out, vectors["decoded"])
    assert_close_to_scale(out, vectors["decoded_from_indices"])
    assert torch.equal(out, flat) and torch.equal(out, int32)


def test_fsq_rules(tokenizer, vectors):
    assert torch.equal(tokenizer.indices_to_codes(vectors["indices_bn"]), vectors["codes"])
    codes = tokenizer.indices_to_codes(torch.arange(64000))
    levels, basis = [8, 8, 8, 5, 5, 5], [1, 8, 64, 512, 2560, 12800]
    digits = codes * torch.tensor([4, 4, 4, 2, 2, 2]) + torch.tensor([4, 4, 4, 2, 2, 2])
    assert torch.equal((digits.long() * torch.tensor(basis)).sum(-1), torch.arange(64000))  # channel 0 = LSB
    for d, level in enumerate(levels):
        assert codes[:, d].unique().numel() == level
    assert codes[:, 0].unique().tolist() == [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
    assert codes[:, 3].unique().tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    table = tokenizer.code_table()
    assert table.shape == (64000, 6)


def test_fixture_contract_through_toklip_build(vectors):
    model = toklip.build(
        vq={"name": "cosmos", "config": str(FIXTURES / "config.json"), "checkpoint": [str(p) for p in RELEASE]},
        encoder="siglip2-test",
        image_size=64,
    )
    assert model.projector.fc1.in_features == 6 and model.vq.vocab_size == 64000
    with torch.no_grad():
        out = model.tokenize(vectors["image"])
        assert_close_to_scale(model.decode(out.indices), vectors["decoded"])
    assert torch.equal(out.indices, vectors["indices_bn"]) and torch.equal(out.codes, vectors["codes"])


def test_release_folder(tmp_path, vectors):
    for p in RELEASE:
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "config.json").write_text("{}")  # the hub repo's small config files are ignored
    vq = build_cosmos(config=FIXTURES / "config.json", checkpoint=tmp_path)
    assert [Path(p).name for p in vq.loaded_from] == ["encoder.jit", "decoder.jit"]
    with torch.no_grad():
        assert torch.equal(vq.encode(vectors["image"]).indices, vectors["indices"])


class _Autoencoder(nn.Module):
    """The module layout of a released autoencoder.jit: encoder, quant_conv, post_quant_conv, decoder and a
    quantizer whose level tables are buffers (non-persistent upstream, but recorded by TorchScript)."""

    def __init__(self, vq: CosmosDITokenizer) -> None:
        super().__init__()
        self.encoder, self.quant_conv = vq.encoder, vq.quant_conv
        self.post_quant_conv, self.decoder = vq.post_quant_conv, vq.decoder
        self.quantizer = nn.Module()
        self.quantizer.register_buffer("_levels", torch.tensor([8, 8, 8, 5, 5, 5], dtype=torch.int32))

    def forward(self, x):
        return self.decoder(self.post_quant_conv(self.quant_conv(self.encoder(x))))


def _save_autoencoder_jit(vq: CosmosDITokenizer, path: Path, dtype: torch.dtype) -> None:
    module = _Autoencoder(vq).to(dtype).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notices: this only writes a test file
        traced = torch.jit.trace(module, torch.zeros(1, 3, 64, 64, dtype=dtype), check_trace=False)
        torch.jit.save(traced, str(path))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autoencoder_jit_in_the_release_dtype(tmp_path, tokenizer, vectors, dtype):
    """Cosmos-0.1 releases are bfloat16 TorchScript files; weights are cast to the fp32 model on load."""
    source = build_cosmos(config=FIXTURES / "config.json", checkpoint=RELEASE)
    _save_autoencoder_jit(source, tmp_path / "autoencoder.jit", dtype)
    vq = build_cosmos(config=FIXTURES / "config.json", checkpoint=tmp_path / "autoencoder.jit")
    for (name, got), want in zip(vq.state_dict().items(), tokenizer.state_dict().values()):
        assert got.dtype == torch.float32
        assert torch.equal(got, want.to(dtype).float()), name
    with torch.no_grad():
        enc = vq.encode(vectors["image"])
    assert enc.codes.dtype == torch.float32 and enc.indices.dtype == torch.int64
    if dtype == torch.float32:
        assert torch.equal(enc.indices, vectors["indices"])
    # pretrained=<local file> (what core passes after resolving a hub tag) loads the same way
    again = toklip.get_spec("vq", "cosmos").create(config=str(FIXTURES / "config.json"),
                                                   pretrained=str(tmp_path / "autoencoder.jit"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vq.state_dict().values()))


def test_state_dicts_load(tmp_path, tokenizer, vectors):
    from safetensors.torch import save_file

    save_file(tokenizer.state_dict(), str(tmp_path / "model.safetensors"))
    a = build_cosmos(config=FIXTURES / "config.json", checkpoint=tmp_path / "model.safetensors")
    a_dir = build_cosmos(config=FIXTURES / "config.json", checkpoint=tmp_path)  # folder with model.safetensors
    torch.save({"model": {"network." + k: v for k, v in tokenizer.state_dict().items()}}, tmp_path / "model.pt")
    b = build_cosmos(config=FIXTURES / "config.json", checkpoint=tmp_path / "model.pt")
    with torch.no_grad():
        for m in (a, a_dir, b):
            assert torch.equal(m.encode(vectors["image"]).indices, vectors["indices"])


def test_bfloat16_model_still_gives_float32_codes(tokenizer, vectors):
    """Upstream's FSQ returns bf16 codes (and .to() resets it to bf16); here codes stay float32."""
    vq = build_cosmos(config=FIXTURES / "config.json", checkpoint=RELEASE).to(torch.bfloat16)
    with torch.no_grad():
        enc = vq.encode(vectors["image"].to(torch.bfloat16))
        out = vq.decode(enc.indices)
    assert enc.codes.dtype == torch.float32 and enc.indices.dtype == torch.int64
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 64, 64)
    agree = (enc.indices == vectors["indices"]).float().mean().item()
    assert agree > 0.5, f"bf16 weights should mostly keep the fp32 indices, agreement {agree:.2f}"
