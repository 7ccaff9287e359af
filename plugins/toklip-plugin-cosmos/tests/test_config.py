"""Config formats (fixture config.json, the official config dicts), any sizes, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toklip import ConfigError
from toklip_plugin_cosmos.config import CosmosArch, arch_from_config
from toklip_plugin_cosmos.model import VARIANTS, build_cosmos
from toklip_plugin_cosmos.patching import haar_level, patchify, unpatchify

FIXTURES = Path(__file__).parent / "fixtures"

# cosmos_tokenizer.networks.configs.discrete_image, as published
OFFICIAL_DI = dict(
    attn_resolutions=[32], channels=128, channels_mult=[2, 4, 4], dropout=0.0, in_channels=3,
    spatial_compression=16, num_res_blocks=2, out_channels=3, resolution=1024, patch_size=4, patch_method="haar",
    z_channels=256, z_factor=1, quantizer="FSQ", embedding_dim=6, levels=[8, 8, 8, 5, 5, 5], num_quantizers=4,
    name="DI", encoder="Default", decoder="Default",
)


def test_fixture_config():
    arch = arch_from_config(FIXTURES / "config.json")
    assert arch == CosmosArch(channels=32, channels_mult=(1, 2, 2), resolution=64, z_channels=16)
    assert arch.num_downsamples == 2 and arch.codebook_size == 64000


def test_official_dicts_are_the_registered_variants():
    assert arch_from_config(OFFICIAL_DI) == VARIANTS["di16x16"][0]
    assert arch_from_config({**OFFICIAL_DI, "spatial_compression": 8}) == VARIANTS["di8x8"][0]
    # cosmos-predict1's discrete_image_{8x8,16x16}_360p: the same dict with patch_size 2
    assert arch_from_config({**OFFICIAL_DI, "patch_size": 2, "spatial_compression": 8}) == VARIANTS["di8x8-360p"][0]
    assert arch_from_config({**OFFICIAL_DI, "patch_size": 2}) == VARIANTS["di16x16-360p"][0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"channels": 32, "channels_mult": [1, 2], "spatial_compression": 8, "patch_size": 2, "levels": [4, 4, 3],
         "embedding_dim": 3, "z_channels": 8, "attn_resolutions": [8], "resolution": 32, "num_res_blocks": 1},
        {"channels": 32, "channels_mult": [1, 1, 1], "spatial_compression": 4, "patch_size": 1,
         "patch_method": "rearrange", "z_channels": 16, "attn_resolutions": [], "num_res_blocks": 1},
    ],
)
def test_any_size_in_the_fixture_format_works(tmp_path, overrides):
    cfg = json.loads((FIXTURES / "config.json").read_text())
    cfg["tokenizer_config"].update(overrides)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    vq = build_cosmos(config=tmp_path / "config.json")
    levels = cfg["tokenizer_config"]["levels"]
    assert vq.code_dim == len(levels) and vq.downsample == overrides["spatial_compression"]
    images = torch.rand(1, 3, 4 * vq.downsample, 4 * vq.downsample) * 2 - 1
    with torch.no_grad():
        enc = vq.encode(images)
        assert enc.indices.shape == (1, 4, 4) and int(enc.indices.max()) < vq.vocab_size
        assert torch.equal(vq.indices_to_codes(enc.indices), enc.codes)
        assert vq.decode(enc.indices).shape == images.shape


def test_per_level_attention_follows_attn_resolutions():
    vq = build_cosmos(variant="test")
    keys = vq.state_dict().keys()
    assert any(k.startswith("encoder.down.1.attn.0.") for k in keys)  # 32/4 = 8 -> 4 after one downsample
    assert not any(k.startswith("encoder.down.0.attn.") for k in keys)
    assert any(k.startswith("decoder.up.1.attn.0.") for k in keys)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"quantizer": "LFQ"}, "'FSQ'"),
        ({"embedding_dim": 8}, "must equal len\\(levels\\)"),
        ({"levels": [8, 1, 8, 5, 5, 5]}, ">= 2"),
        ({"patch_size": 3}, "power of two"),
        ({"spatial_compression": 128}, "downsamples"),
        ({"channels": 48}, "multiples of 32"),
        ({"patch_method": "wavelet"}, "patch_method"),
        ({"channel": 128}, "unknown Cosmos DI config key"),
        ({"channels_mult": "244"}, "list of integers"),
        ({"num_res_blocks": 0}, "positive integer"),
    ],
)
def test_bad_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        arch_from_config({**OFFICIAL_DI, **overrides})


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_cosmos(config=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_cosmos(config=tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown Cosmos DI variant"):
        build_cosmos(variant="di32x32")
    with pytest.raises(ConfigError, match="unknown Cosmos argument"):
        build_cosmos(variant="test", codebook_size=64000)
    with pytest.raises(ConfigError, match="not both"):
        build_cosmos(variant="test", checkpoint="a.jit", pretrained="b.jit")


def test_haar_patcher_is_the_documented_transform_and_invertible():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    bands = haar_level(x)
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    expected = torch.cat([(a + b + c + d) / 4, ((a + b) - (c + d)) / 4, ((a - b) + (c - d)) / 4,
                          ((a - b) - (c - d)) / 4], dim=1)
    torch.testing.assert_close(bands, expected)
    for p, method in [(4, "haar"), (2, "haar"), (1, "haar"), (4, "rearrange")]:
        y = patchify(x, p, method)
        assert y.shape == (2, 3 * p * p, 8 // p, 8 // p)
        torch.testing.assert_close(unpatchify(y, p, method), x)
