"""Config formats: the fixture config.json, the official Lightning config and init_args, toklip's flat keys;
any sizes in those formats build a working tokenizer; malformed configs fail with a ConfigError."""

from __future__ import annotations

import json

import pytest
import torch

from toklip import ConfigError
from toklip_plugin_magvit2.config import MagvitArch, arch_from_config
from toklip_plugin_magvit2.model import VARIANTS, build_magvit2

FIXTURE_ARCH = MagvitArch(ch=32, ch_mult=(1, 1, 1, 2, 2), num_res_blocks=1, z_channels=18)


def test_fixture_config_file(fixtures):
    assert arch_from_config(fixtures / "config.json") == FIXTURE_ARCH


def test_official_layouts_and_flat_keys(fixtures, tmp_path):
    init_args = json.loads((fixtures / "config.json").read_text())["official_init_args"]
    assert arch_from_config(init_args) == FIXTURE_ARCH
    assert arch_from_config({"model": {"class_path": "x.VQModel", "init_args": init_args}}) == FIXTURE_ARCH
    assert arch_from_config(FIXTURE_ARCH.to_kwargs()) == FIXTURE_ARCH


def test_official_yaml_config(tmp_path):
    yaml = pytest.importorskip("yaml")
    text = """
model:
  class_path: src.Open_MAGVIT2.models.lfqgan.VQModel
  init_args:
    ddconfig:
      double_z: False
      z_channels: 18
      resolution: 128
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [1,1,2,2,4]  # num_down = len(ch_mult)-1
      num_res_blocks: 4
    lossconfig:
      target: src.Open_MAGVIT2.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
    n_embed: 262144
    embed_dim: 18
    use_ema: True
"""
    assert yaml  # PyYAML present
    path = tmp_path / "imagenet_lfqgan_256_L.yaml"
    path.write_text(text)
    assert arch_from_config(path) == VARIANTS["imagenet-256"][0]


@pytest.mark.parametrize(
    "ddconfig, bits",
    [
        ({"ch": 64, "ch_mult": [1, 2], "num_res_blocks": 2, "z_channels": 12}, 12),
        ({"ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "z_channels": 14}, 14),
    ],
)
def test_any_size_in_the_fixture_format_works(fixtures, tmp_path, ddconfig, bits):
    cfg = json.loads((fixtures / "config.json").read_text())
    cfg["official_init_args"]["ddconfig"].update(ddconfig)
    cfg["official_init_args"].update(n_embed=2**bits, embed_dim=bits)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    vq = build_magvit2(config=tmp_path / "config.json")
    ds = 2 ** (len(ddconfig["ch_mult"]) - 1)
    assert (vq.code_dim, vq.vocab_size, vq.downsample) == (bits, 2**bits, ds)
    images = torch.rand(1, 3, 4 * ds, 4 * ds) * 2 - 1
    with torch.no_grad():
        enc = vq.encode(images)
        assert enc.indices.shape == (1, 4, 4) and enc.codes.shape == (1, 4, 4, bits)
        assert vq.decode(enc.indices).shape == images.shape


def test_keyword_overrides_beat_variant_and_config(fixtures):
    vq = build_magvit2(config=fixtures / "config.json", num_res_blocks=2)
    assert vq.arch == MagvitArch(ch=32, ch_mult=(1, 1, 1, 2, 2), num_res_blocks=2, z_channels=18)
    assert build_magvit2(**vq.config_kwargs).arch == vq.arch


@pytest.mark.parametrize(
    "data, message",
    [
        ({"official_init_args": {"ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 18},
                                 "n_embed": 1000, "embed_dim": 18}}, "2\\*\\*z_channels"),
        ({"ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 18}, "embed_dim": 16},
         "must equal z_channels"),
        ({"ch": 24, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8}, "multiples of 32"),
        ({"ch": 32, "ch_mult": [], "num_res_blocks": 1, "z_channels": 8}, "ch_mult"),
        ({"ch": 32, "ch_mult": [1], "num_res_blocks": 0, "z_channels": 8}, "num_res_blocks"),
        ({"ch": 32, "ch_mult": [1], "num_res_blocks": 1, "z_channels": 63}, "int64"),
        ({"ddconfig": {"ch": 32, "ch_mult": [1], "num_res_blocks": 1, "z_channels": 8, "double_z": True}}, "double_z"),
        ({"hidden": 3}, "unrecognised Open-MAGVIT2 config"),
    ],
)
def test_bad_configs(data, message):
    with pytest.raises(ConfigError, match=message):
        arch_from_config(data)


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_magvit2(config=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_magvit2(config=tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown Open-MAGVIT2 variant"):
        build_magvit2(variant="imagenet-512")
    with pytest.raises(ConfigError, match="unknown Open-MAGVIT2 argument"):
        build_magvit2(variant="test", codebook_dim=18)
