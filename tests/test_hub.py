"""Weights from the Hugging Face hub: the real resolution code against a temporary hub cache, offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import toklip
from toklip.weights.hub import resolve_weights

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, repo_id, files):
    """Lay out files the way huggingface_hub caches a snapshot (refs/main -> snapshots/<rev>/...)."""
    folder = root / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    snap = folder / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, snap / name)
    return snap


@pytest.fixture
def cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return root


def test_preset_weights_resolve_from_the_cache(cache, fixtures_dir):
    hub_cache(cache, "TencentARC/TokLIP", {"TokLIP_S_256.pt": fixtures_dir / "official-toklip" / "official_state.pt"})
    path = resolve_weights(toklip.get_spec("preset", "toklip-s-256"), True)
    assert path.name == "TokLIP_S_256.pt" and REVISION in str(path)


def test_offline_and_not_cached_is_one_clear_error(cache):
    with pytest.raises(toklip.WeightsNotFoundError) as e:
        toklip.build("toklip-l-384", pretrained=True)
    text = str(e.value)
    assert "TokLIP_L_384.pt" in text and "TencentARC/TokLIP" in text
    assert "pretrained='/path/to/TokLIP_L_384.pt'" in text


def test_unknown_tag_or_missing_path(cache):
    with pytest.raises(toklip.WeightsNotFoundError, match="neither an existing file nor a known weights tag"):
        resolve_weights(toklip.get_spec("vq", "llamagen"), "/no/such/file.pt")
    with pytest.raises(toklip.WeightsNotFoundError, match="has no published weights"):
        resolve_weights(toklip.get_spec("vq", "llamagen-test"), True)


def _fixture_plugin(fixtures_dir):
    config = json.loads((fixtures_dir / "official-toklip" / "config.json").read_text())

    class FixturePlugin:
        @toklip.hookimpl
        def register_presets(self, register):
            register("toklip-fixture-a", config,
                     pretrained={"official": {"hf_hub_id": "TencentARC/TokLIP", "file": "TokLIP_fixture.pt"}})

        @toklip.hookimpl
        def register_vq_tokenizers(self, register):
            register("llamagen-fixture", "toklip.builtin.llamagen:build_llamagen",
                     defaults={"ch": 32, "ch_mult": [1, 1, 2, 2], "z_channels": 32, "num_res_blocks": 2,
                               "codebook_size": 1024, "codebook_embed_dim": 8},
                     pretrained={"t2i": {"hf_hub_id": "peizesun/llamagen_t2i", "file": "vq_ds16_t2i.pt"}})

    return FixturePlugin()


def test_build_preset_pretrained_true_loads_the_official_release(cache, fixtures_dir):
    d = fixtures_dir / "official-toklip"
    hub_cache(cache, "TencentARC/TokLIP", {"TokLIP_fixture.pt": d / "official_state.pt"})
    vectors = load_file(str(d / "vectors.safetensors"))
    with toklip.temp_plugin(_fixture_plugin(fixtures_dir), name="fixture"):
        model = toklip.build("toklip-fixture-a", pretrained=True)
    with torch.no_grad():
        pooled = model.encode_image(vectors["image"])
    torch.testing.assert_close(pooled, vectors["pooled"], rtol=1e-5, atol=1e-6)


def test_component_pretrained_true_loads_the_llamagen_release(cache, fixtures_dir):
    d = fixtures_dir / "official-toklip"
    hub_cache(cache, "peizesun/llamagen_t2i", {"vq_ds16_t2i.pt": d / "llamagen_vq.pt"})
    vectors = load_file(str(d / "vectors.safetensors"))
    with toklip.temp_plugin(_fixture_plugin(fixtures_dir), name="fixture"):
        model = toklip.build(vq={"name": "llamagen-fixture", "pretrained": True}, encoder="siglip2-test")
    with torch.no_grad():
        out = model.tokenize(vectors["image"])
    assert torch.equal(out.indices, vectors["vq_indices"])
    assert "pretrained" not in model.config.without_pretrained().vq.kwargs


def test_from_pretrained_by_repo_id(cache, tmp_path):
    model = toklip.build("toklip-test")
    model.save_pretrained(tmp_path / "saved")
    hub_cache(cache, "someone/toklip-test", {p.name: p for p in (tmp_path / "saved").iterdir()})
    again = toklip.from_pretrained("someone/toklip-test")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x), rtol=0, atol=0)
    with pytest.raises(toklip.WeightsNotFoundError, match="someone/missing"):
        toklip.from_pretrained("someone/missing")
