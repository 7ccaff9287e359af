"""What trains in each stage, LoRA (merge), and save/load round trips that write only what trained."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import toklip
from toklip.vlm.model import build_vlm
from toklip.vlm.saving import load_vlm

from .conftest import image

CONV = [[{"from": "human", "value": "<image>\nwhat digit is this ?"}, {"from": "gpt", "value": "seven"}],
        [{"from": "human", "value": "describe the image . <image>"}, {"from": "gpt", "value": "a red seven"}]]


def _grads(vlm) -> dict[str, set[str]]:
    """Backward one batch; -> {part: names of parameters that got a gradient}."""
    vlm.zero_grad(set_to_none=True)
    batch = vlm.prepare(CONV, [image(0), image(1)])
    vlm.train()
    vlm(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"])["loss"].backward()
    got: dict[str, set[str]] = {"features": set(), "projector": set(), "llm": set()}
    for name, p in vlm.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            got[name.split(".")[0]].add(name)
    vlm.eval()
    return got


def _logits(vlm) -> torch.Tensor:
    batch = vlm.prepare(CONV, [image(0), image(1)])
    with torch.no_grad():
        return vlm(batch["input_ids"], batch["attention_mask"], images=batch["images"])["logits"]


@pytest.fixture
def fresh(llm_dir):
    torch.manual_seed(0)
    return build_vlm(tokenizer="toklip-test", llm=llm_dir)


def test_stage_1_trains_the_projector_only(fresh):
    fresh.set_stage(1)
    got = _grads(fresh)
    assert got["features"] == set() and got["llm"] == set()
    assert got["projector"] == {n for n, _ in fresh.named_parameters() if n.startswith("projector.")}
    assert not any(p.requires_grad for p in fresh.features.parameters())


def test_stage_2_trains_the_projector_and_the_llm(fresh):
    fresh.set_stage(2)
    got = _grads(fresh)
    assert got["features"] == set()
    llm = {n for n, _ in fresh.named_parameters() if n.startswith("llm.")}
    assert got["llm"] == llm and len(got["projector"]) == 4  # every LLM weight, tied embeddings included


def test_stage_2_with_lora_trains_the_adapters_and_the_projector(fresh):
    fresh.apply_lora({"r": 4, "alpha": 8, "dropout": 0.0})
    fresh.set_stage(2)
    got = _grads(fresh)
    assert got["features"] == set() and len(got["projector"]) == 4
    assert got["llm"] and all(".lora_" in n for n in got["llm"])
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("llm.")} == {
        n for n, _ in fresh.named_parameters() if ".lora_" in n}
    with pytest.raises(toklip.ConfigError, match="stage-2 option"):
        fresh.set_stage(1)


def test_lora_merged_equals_unmerged(fresh):
    fresh.apply_lora({"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():  # B starts at zero (a no-op adapter): give it weights so the merge has work to do
        for name, p in fresh.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    before = _logits(fresh)
    base = fresh.llm.get_base_model()
    assert not torch.allclose(before, _logits_without_adapters(fresh), atol=1e-4)
    fresh.merge_lora()
    assert fresh.llm is base and fresh.config.lora is None and fresh.config.llm_trained
    torch.testing.assert_close(_logits(fresh), before, atol=1e-5, rtol=1e-5)


def _logits_without_adapters(vlm) -> torch.Tensor:
    with vlm.llm.disable_adapter():
        return _logits(vlm)


def _keys(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_stage_1_round_trip_saves_the_projector_and_the_random_tokenizer(fresh, tmp_path, llm_dir):
    fresh.set_stage(1)
    with torch.no_grad():
        for p in fresh.projector.parameters():
            p.add_(0.1)
    out = fresh.save_pretrained(tmp_path / "vlm")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "toklip.json", "toklip.safetensors"}
    assert _keys(out / "model.safetensors") == {n for n in fresh.state_dict() if n.startswith("projector.")}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "toklip-vlm" and cfg["saved"] == ["projector"] and cfg["llm"] == str(llm_dir.resolve())
    assert cfg["tokenizer"]["source"] is None  # random-init preset: its weights travel with the VLM
    loaded = load_vlm(out)
    torch.testing.assert_close(_logits(loaded), _logits(fresh), atol=0, rtol=0)
    assert loaded.chat(image(2), "what digit is this ?", max_new_tokens=4, do_sample=False) == fresh.chat(
        image(2), "what digit is this ?", max_new_tokens=4, do_sample=False)


def test_a_tokenizer_with_a_source_is_not_copied(llm_dir, tmp_path):
    torch.manual_seed(0)
    toklip.build("toklip-test").save_pretrained(tmp_path / "tok")
    vlm = build_vlm(tokenizer=str(tmp_path / "tok"), llm=llm_dir, projector="linear")
    out = vlm.save_pretrained(tmp_path / "vlm")
    assert not (out / "toklip.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["tokenizer"] == {"source": str((tmp_path / "tok").resolve())}
    torch.testing.assert_close(_logits(load_vlm(out)), _logits(vlm), atol=0, rtol=0)


def test_lora_round_trip_saves_only_the_adapters(fresh, tmp_path):
    fresh.apply_lora({"r": 4, "alpha": 8, "dropout": 0.0})
    fresh.set_stage(2)
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    out = fresh.save_pretrained(tmp_path / "vlm")
    keys = _keys(out / "model.safetensors")
    assert keys == {n for n in fresh.state_dict() if n.startswith("projector.") or ".lora_" in n}
    assert not any("base_layer" in k for k in keys)
    loaded = load_vlm(out)
    assert loaded.config.lora == fresh.config.lora
    torch.testing.assert_close(_logits(loaded), _logits(fresh), atol=0, rtol=0)


def test_full_stage_2_round_trip_saves_the_llm(fresh, tmp_path):
    fresh.set_stage(2)
    with torch.no_grad():
        fresh.llm.get_input_embeddings().weight.mul_(1.5)
    out = fresh.save_pretrained(tmp_path / "vlm")
    assert any(k.startswith("llm.") for k in _keys(out / "model.safetensors"))
    torch.testing.assert_close(_logits(load_vlm(out)), _logits(fresh), atol=0, rtol=0)


def test_loading_names_what_is_wrong(fresh, tmp_path, llm_dir):
    out = fresh.save_pretrained(tmp_path / "vlm")
    cfg = json.loads((out / "config.json").read_text())
    cfg["llm"] = str(tmp_path / "moved")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(toklip.ConfigError, match="does not exist; pass load_vlm"):
        load_vlm(out)
    torch.testing.assert_close(_logits(load_vlm(out, llm=llm_dir)), _logits(fresh), atol=0, rtol=0)
    cfg["projektor"] = "linear"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(toklip.ConfigError, match="did you mean 'projector'"):
        load_vlm(out, llm=llm_dir)
    (out / "model.safetensors").write_bytes(b"garbage")
    del cfg["projektor"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(toklip.CheckpointError, match="unreadable"):
        load_vlm(out, llm=llm_dir)
    with pytest.raises(toklip.ConfigError, match="neither a VLM folder"):
        load_vlm(tmp_path)
