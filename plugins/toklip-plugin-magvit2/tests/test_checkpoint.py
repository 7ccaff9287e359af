"""Checkpoint loading: wrong files fail with a CheckpointError that says what differs, never partially load."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from toklip.weights import read_checkpoint
from toklip import CheckpointError, ConfigError
from toklip_plugin_magvit2.model import build_magvit2


def _fixture_state(fixtures):
    return dict(read_checkpoint(fixtures / "model.ckpt")["state_dict"])


def _config_with(fixtures, tmp_path, **ddconfig):
    cfg = json.loads((fixtures / "config.json").read_text())
    cfg["official_init_args"]["ddconfig"].update(ddconfig)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_fewer_blocks_than_the_checkpoint_is_reported(fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="unexpected"):
        build_magvit2(config=_config_with(fixtures, tmp_path, ch_mult=[1, 1, 1, 2]), checkpoint=fixtures / "model.ckpt")


def test_more_blocks_than_the_checkpoint_is_reported(fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        build_magvit2(config=_config_with(fixtures, tmp_path, num_res_blocks=2), checkpoint=fixtures / "model.ckpt")


def test_shape_mismatch_is_reported(fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build_magvit2(config=_config_with(fixtures, tmp_path, ch=64), checkpoint=fixtures / "model.ckpt")


def test_loss_and_bookkeeping_keys_are_ignored(fixtures, tmp_path, vectors):
    sd = _fixture_state(fixtures)
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 3, 3)
    sd["model_ema.lossdiscriminatormain0weight"] = torch.zeros(4, 3, 3, 3)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, tmp_path / "with_loss.ckpt")
    m = build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "with_loss.ckpt")
    with torch.no_grad():
        assert torch.equal(m.encode(vectors["image"]).indices.reshape(2, -1), vectors["indices_bn"])


def test_forcing_ema_without_ema_keys_fails(fixtures, tmp_path):
    sd = {k: v for k, v in _fixture_state(fixtures).items() if not k.startswith("model_ema.")}
    torch.save({"state_dict": sd}, tmp_path / "raw_only.ckpt")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "raw_only.ckpt", weights="ema")
    assert build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "raw_only.ckpt").loaded_weights == "raw"


def test_a_missing_ema_shadow_is_reported(fixtures, tmp_path):
    sd = _fixture_state(fixtures)
    del sd["model_ema.decoderconv_outweight"]
    torch.save({"state_dict": sd}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "partial.ckpt")


def test_unrelated_checkpoint_is_refused(fixtures, tmp_path):
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="no Open-MAGVIT2 encoder/decoder weights"):
        build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "other.ckpt")


def test_truncated_file_is_a_checkpoint_error(fixtures, tmp_path):
    data = (fixtures / "model.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "cut.ckpt")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_never_run(fixtures, tmp_path, capsys):
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError):
        build_magvit2(config=fixtures / "config.json", checkpoint=tmp_path / "evil.ckpt")
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_and_bad_weights_choice(fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_magvit2(variant="test", checkpoint=tmp_path / "nope.ckpt")
    with pytest.raises(ConfigError, match="'auto', 'ema' or 'raw'"):
        build_magvit2(config=fixtures / "config.json", checkpoint=fixtures / "model.ckpt", weights="best")
    with pytest.raises(ConfigError, match="not both"):
        build_magvit2(variant="test", checkpoint=fixtures / "model.ckpt", pretrained=str(fixtures / "model.ckpt"))
