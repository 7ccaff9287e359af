"""Loading LlamaGen checkpoints: the release layouts, strict key/shape checks, safe reading, config sources."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from tests.gen.conftest import fixture_config, fixture_dir, fixture_vectors
from toklip.core.errors import CheckpointError, ConfigError
from toklip.gen import GPTConfig, load_gpt
from toklip.gen.load import infer_gpt_config, resolve_gpt_config
from toklip.gen.rope import rope_2d_table


@pytest.fixture(scope="module")
def c2i_state() -> dict[str, torch.Tensor]:
    return torch.load(fixture_dir("gpt-c2i") / "gpt.pt", weights_only=True)["model"]


def _teacher_logits_match(model, kind: str = "gpt-c2i") -> bool:
    v = fixture_vectors(kind)
    return torch.allclose(model(v["codes"], v["cond"]), v["logits_teacher_forced"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["model", "plain", "module", "state_dict", "ddp-prefix", "safetensors"])
def test_release_layouts_load(tmp_path, c2i_state, layout):
    path = tmp_path / "gpt.pt"
    if layout == "model":
        torch.save({"model": c2i_state, "optimizer": {}, "steps": 7}, path)
    elif layout == "plain":  # what LlamaGen's FSDP training writes
        torch.save(c2i_state, path)
    elif layout == "module":  # DeepSpeed
        torch.save({"module": c2i_state}, path)
    elif layout == "state_dict":
        torch.save({"state_dict": c2i_state}, path)
    elif layout == "ddp-prefix":
        torch.save({"model": {f"module.{k}": t for k, t in c2i_state.items()}}, path)
    else:
        path = tmp_path / "gpt.safetensors"
        save_file(c2i_state, str(path))
    model = load_gpt(path, fixture_dir("gpt-c2i") / "config.json")
    assert not model.training and _teacher_logits_match(model)


def test_the_fixture_files_load_with_every_config_source(c2i_state):
    folder = fixture_dir("gpt-c2i")
    data = fixture_config("gpt-c2i")
    flat = {**data["model_args"], "model_type": "c2i"}
    for source in (folder / "config.json", str(folder / "config.json"), data, flat, GPTConfig.from_dict(data)):
        assert _teacher_logits_match(load_gpt(folder / "gpt.pt", source))
    # a named size with overrides, and inference from the weights (the grid is not in a release file)
    named = load_gpt(folder / "gpt.pt", "gpt-test", class_dropout_prob=0.1)
    assert _teacher_logits_match(named)
    inferred = load_gpt(folder / "gpt.pt", n_head=4, block_size=16)
    assert _teacher_logits_match(inferred)
    assert inferred.config.num_classes == 10 and inferred.config.vocab_size == 512


def test_t2i_config_is_inferred_from_the_caption_embedder():
    state = torch.load(fixture_dir("gpt-t2i") / "gpt.pt", weights_only=True)["model"]
    cfg = infer_gpt_config(state, n_head=4, block_size=16)
    assert (cfg.model_type, cfg.cls_token_num, cfg.caption_dim) == ("t2i", 120, 32)


def test_inference_needs_the_grid_and_a_known_width(c2i_state):
    with pytest.raises(ConfigError, match="block_size"):
        infer_gpt_config(c2i_state, n_head=4)
    with pytest.raises(ConfigError, match="none of LlamaGen's sizes"):
        infer_gpt_config(c2i_state, block_size=16)
    # a stored RoPE table gives the grid
    cfg = infer_gpt_config({**c2i_state, "freqs_cis": rope_2d_table(4, 16, 10000, 1)}, n_head=4)
    assert cfg.block_size == 16


def test_gqa_heads_are_inferred():
    from toklip.gen import build_gpt

    with torch.device("meta"):
        model = build_gpt("gpt-b", n_kv_head=4, vocab_size=64, num_classes=3, block_size=4)
    cfg = infer_gpt_config(model.state_dict(), block_size=4)
    assert (cfg.dim, cfg.n_head, cfg.n_kv_head, cfg.n_layer, cfg.num_classes) == (768, 12, 4, 12, 3)


def test_derived_entries_are_dropped_and_checked(tmp_path, c2i_state):
    config = fixture_dir("gpt-c2i") / "config.json"
    extra = {
        **c2i_state,
        "freqs_cis": rope_2d_table(4, 16, 10000, 1),
        "layers.0.attention.kv_cache.k_cache": torch.zeros(2, 4, 24, 16),
        "layers.0.attention.kv_cache.v_cache": torch.zeros(2, 4, 24, 16),
    }
    torch.save({"model": extra}, tmp_path / "a.pt")
    assert _teacher_logits_match(load_gpt(tmp_path / "a.pt", config))
    torch.save({"model": {**c2i_state, "freqs_cis": rope_2d_table(5, 16, 10000, 1)}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="RoPE table"):
        load_gpt(tmp_path / "b.pt", config)


def test_strict_loading_names_what_differs(tmp_path, c2i_state):
    config = fixture_dir("gpt-c2i") / "config.json"
    missing = {k: v for k, v in c2i_state.items() if k != "norm.weight"}
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing \(1\): norm.weight"):
        load_gpt(tmp_path / "missing.pt", config)
    torch.save({"model": {**c2i_state, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): extra.weight"):
        load_gpt(tmp_path / "extra.pt", config)
    with pytest.raises(CheckpointError, match="shape mismatch"):  # wrong size: 1024 codes
        load_gpt(fixture_dir("gpt-c2i") / "gpt.pt", config, vocab_size=1024)
    with pytest.raises(CheckpointError, match="missing"):  # t2i config for a c2i file
        load_gpt(fixture_dir("gpt-c2i") / "gpt.pt", fixture_dir("gpt-t2i") / "config.json")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path, c2i_state):
    path = tmp_path / "hostile.pt"
    torch.save({"model": c2i_state, "hook": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_gpt(path, fixture_dir("gpt-c2i") / "config.json")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": _RunsCode()}))
    with pytest.raises(CheckpointError):
        load_gpt(raw, "gpt-test")


def test_unreadable_files_and_non_tensor_states(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gpt(tmp_path / "nope.pt", "gpt-test")
    (tmp_path / "trunc.pt").write_bytes((fixture_dir("gpt-c2i") / "gpt.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_gpt(tmp_path / "trunc.pt", "gpt-test")
    torch.save({"model": {"tok_embeddings.weight": [1, 2]}}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="non-tensor"):
        load_gpt(tmp_path / "list.pt", "gpt-test")


def test_loaded_model_owns_its_storage_and_takes_dtype(tmp_path):
    model = load_gpt(fixture_dir("gpt-c2i") / "gpt.pt", fixture_dir("gpt-c2i") / "config.json", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())
    v = fixture_vectors("gpt-c2i")
    logits = model(v["codes"], v["cond"])  # bf16 weights, float32 logits, close to the fp32 reference
    assert logits.dtype == torch.float32
    assert (logits - v["logits_teacher_forced"]).abs().max() < 0.05 * v["logits_teacher_forced"].abs().max()


def test_config_sources_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="pass config"):
        resolve_gpt_config(None)
    with pytest.raises(ConfigError, match="must be a size name"):
        resolve_gpt_config(42)  # type: ignore[arg-type]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_gpt_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        resolve_gpt_config(str(tmp_path / "list.json"))
