"""Issue 11 items 1-3: a config, preset or saved folder is data. Each test builds the hostile file itself."""

from __future__ import annotations

import json
import resource
import socket
from pathlib import Path

import pytest

import toklip
from toklip.core.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("saved")
    toklip.build("toklip-test").save_pretrained(d)
    return d


def _tamper(saved: Path, tmp_path: Path, edit) -> Path:
    """A copy of a saved folder whose config.json went through ``edit(config_dict)``."""
    out = tmp_path / "hostile"
    out.mkdir()
    (out / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    cfg = json.loads((saved / "config.json").read_text())
    edit(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _code_tokenizer_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A tokenizer folder whose auto_map points transformers at Python that leaves a marker when imported."""
    folder, marker = tmp_path / "evil_tok", tmp_path / "PWNED"
    folder.mkdir()
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": [None, "evil.EvilTokenizer"]}, "tokenizer_class": "EvilTokenizer"}))
    return folder, marker


def _all_loaders(folder: Path):
    from toklip.model.loading import load_model

    yield lambda: toklip.from_pretrained(folder)
    yield lambda: toklip.load(folder)
    yield lambda: load_model(str(folder), device="cpu")  # what `toklip serve --model FOLDER` and eval call


@pytest.mark.parametrize("variant", ["tokenizer-folder", "trust-remote-code"])
def test_config_cannot_run_tokenizer_code(saved, tmp_path, variant):
    folder, marker = _code_tokenizer_folder(tmp_path)

    def edit(cfg):
        if variant == "tokenizer-folder":
            cfg["encoder"]["tokenizer"] = str(folder)
        else:
            cfg["encoder"]["text"] = {"tokenizer_kwargs": {"trust_remote_code": True}}

    hostile = _tamper(saved, tmp_path, edit)
    for load in _all_loaders(hostile):
        with pytest.raises(ConfigError, match="tokenizer"):
            model = load()
            model.encode_text(["a photo of a cat"])  # where a lazily built tokenizer would import the code
    assert not marker.exists()


def test_load_official_config_cannot_name_a_tokenizer_folder(tmp_path):
    folder, marker = _code_tokenizer_folder(tmp_path)
    fixtures = Path(__file__).parent / "fixtures" / "official-toklip"
    cfg = json.loads((fixtures / "config.json").read_text())
    cfg["open_clip_model_config"]["text_cfg"]["hf_tokenizer_name"] = str(folder)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="tokenizer"):
        toklip.load_official(fixtures / "official_state.pt", config=tmp_path / "config.json")
    assert not marker.exists()


def test_config_cannot_make_timm_fetch_a_url(saved, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a config made toklip open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    hostile = _tamper(saved, tmp_path, lambda cfg: cfg["encoder"].update(
        vision={"pretrained_cfg_overlay": {"url": "http://127.0.0.1:9/evil.pth"}}))
    with pytest.raises(ConfigError, match="pretrained_cfg_overlay"):
        toklip.from_pretrained(hostile)


@pytest.mark.parametrize("field,value", [
    ("vq", {"name": "llamagen-test", "checkpoint": "https://example.com/vq.pt"}),
    ("vq", {"name": "llamagen-test", "ch_mult": ["pipe:curl example.com"]}),
    ("encoder", {"name": "siglip2-test", "text": {"hf_model_name": "owner/model", "hf_model_pretrained": True}}),
])
def test_config_refuses_urls_and_third_party_model_names(field, value, tmp_path):
    cfg = toklip.build("toklip-test").config.to_dict()
    cfg[field] = value
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError):
        toklip.load(tmp_path / "c.json")


def test_component_kwargs_are_checked_with_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'hidden'"):
        toklip.build("toklip-test", projector={"hiden": 32})


def test_huge_config_against_real_weights_allocates_nothing(saved, tmp_path):
    """A config claiming embed_dim 100000 would be a ~50 GB model: the shapes are checked on the meta device."""
    hostile = _tamper(saved, tmp_path, lambda cfg: cfg["encoder"].update(
        vision={"embed_dim": 100_000, "num_heads": 4}, embed_dim=100_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(CheckpointError, match="shape mismatch"):
        toklip.from_pretrained(hostile)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB"


def test_huge_random_init_config_is_refused(tmp_path):
    cfg = toklip.build("toklip-test").config.to_dict()
    cfg["encoder"] = {"name": "siglip2-test", "vision": {"embed_dim": 400_000, "depth": 40, "num_heads": 4},
                      "embed_dim": 400_000}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="B parameters"):
        toklip.load(tmp_path / "c.json")
