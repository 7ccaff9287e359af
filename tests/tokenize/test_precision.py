"""The CPU speed modes: ``--dtype winograd`` (fp32 with NNPACK Winograd 3x3 convolutions: the same indices as
fp32 on the test VQ, deterministic, recorded, with a fallback when NNPACK is missing) and the warning that bf16 is
emulated on CPUs without native bf16."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from toklip.tokenize import encode, fastconv
from toklip.tokenize.encode import build_tokenizer

from .conftest import make_class_folders, run, shard_bytes, vq_spec

SIZE = 64  # llamagen-test's first level then works on 64 x 64 maps: the smallest Winograd takes


def images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return nn.functional.interpolate(x, size=SIZE, mode="bilinear", align_corners=False).clamp(-1, 1)


needs_nnpack = pytest.mark.skipif(not fastconv.nnpack_works(), reason="this torch build has no working NNPACK")


@needs_nnpack
def test_winograd_convolution_matches_the_direct_one_and_leaves_small_maps_alone():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 16, 3, padding=1).eval()
    x = torch.randn(2, 32, 64, 64)
    with torch.no_grad():
        direct = conv(x)
        assert fastconv.use_winograd(nn.Sequential(conv, nn.Conv2d(32, 32, 1))) == 1  # the 1x1 is not eligible
        assert type(conv) is fastconv.WinogradConv2d and set(conv.state_dict()) == {"weight", "bias"}
        fast = conv(x)
        assert not torch.equal(fast, direct)  # really another algorithm ...
        assert torch.allclose(fast, direct, rtol=1e-4, atol=1e-4)  # ... with the same result
        small = torch.randn(1, 32, 16, 16)
        assert torch.equal(conv(small), nn.functional.conv2d(small, conv.weight, conv.bias, padding=1))


@needs_nnpack
def test_winograd_mode_gives_the_fp32_indices_and_is_recorded(tmp_path):
    fp32 = build_tokenizer(vq_spec(), device="cpu", image_size=SIZE, precision="fp32")
    fast = build_tokenizer(vq_spec(), device="cpu", image_size=SIZE, precision="winograd")
    assert fast.precision == "winograd" and "Winograd" in fast.describe_precision()["encoder"]
    assert any(isinstance(m, fastconv.WinogradConv2d) for m in fast.vq.encoder.modules())
    assert not any(isinstance(m, fastconv.WinogradConv2d) for m in fast.vq.decoder.modules())
    assert fast.weights_sha256 == fp32.weights_sha256
    x = images()
    assert torch.equal(fast.indices(x), fp32.indices(x))
    assert torch.equal(fast.indices(x), fast.indices(x))  # deterministic

    src = make_class_folders(tmp_path / "in", per_class=2)
    run(src, tmp_path / "a", size=SIZE, precision="winograd", shard_size=2)
    run(src, tmp_path / "b", size=SIZE, precision="winograd", shard_size=2)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["precision"]["encoder"].startswith("fp32, Winograd")


def test_winograd_without_nnpack_falls_back_to_fp32_with_a_warning(monkeypatch):
    monkeypatch.setattr(fastconv, "nnpack_works", lambda: False)
    with pytest.warns(UserWarning, match="Winograd convolution is unavailable"):
        tok = build_tokenizer(vq_spec(), device="cpu", image_size=SIZE, precision="winograd")
    assert tok.precision == "fp32" and tok.describe_precision()["encoder"] == "fp32"
    assert not any(isinstance(m, fastconv.WinogradConv2d) for m in tok.vq.modules())


def test_bf16_on_a_cpu_without_native_bf16_says_it_is_slower(monkeypatch):
    monkeypatch.setattr(encode, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16.*--dtype winograd"):
        tok = build_tokenizer(vq_spec(), device="cpu", image_size=32, precision="bf16")
    assert tok.precision == "bf16" and tok.channels_last
    assert tok.describe_precision() == {"encoder": "bf16 autocast", "distances": "fp32"}
