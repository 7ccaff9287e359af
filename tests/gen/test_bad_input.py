"""Bad input gets an InputError / ConfigError that names the problem, never a crash deep inside torch."""

from __future__ import annotations

import math

import pytest
import torch

from toklip.core.errors import ConfigError, InputError
from toklip.gen import GPTConfig, build_gpt, cached_logits, named_config, sample


@pytest.fixture(scope="module")
def c2i():
    return build_gpt("gpt-test").eval()


@pytest.fixture(scope="module")
def t2i():
    return build_gpt("gpt-test-t2i").eval()


LABELS = torch.tensor([1, 2])
CODES = torch.zeros(2, 16, dtype=torch.long)


@pytest.mark.parametrize(("codes", "message"), [
    (torch.full((2, 16), 512), r"in \[0, 511\]"),
    (torch.full((2, 16), -1), r"in \[0, 511\]"),
    (torch.zeros(2, 16), "integer tensor"),
    (torch.zeros(2, 16, dtype=torch.bool), "integer tensor"),
    (torch.zeros(16, dtype=torch.long), r"shape \[B, N\]"),
    (torch.zeros(2, 17, dtype=torch.long), r"1 <= N <= 16"),
    (torch.zeros(2, 0, dtype=torch.long), r"1 <= N <= 16"),
    (torch.zeros(3, 16, dtype=torch.long), "batch 3 but the condition has batch 2"),
    ([[1, 2]], "integer tensor"),
])
def test_bad_codes(c2i, codes, message):
    with pytest.raises(InputError, match=message):
        c2i(codes, LABELS)


@pytest.mark.parametrize(("cond", "message"), [
    (torch.tensor([10, 11]), r"in \[0, 10\] \(10 is the null class\)"),
    (torch.tensor([-1, 0]), r"in \[0, 10\]"),
    (torch.tensor([1.0, 2.0]), "integer class labels"),
    (torch.tensor([[1, 2]]), r"shape \[B\]"),
    (torch.zeros(0, dtype=torch.long), r"B >= 1"),
    ("cat", "class labels"),
    ([1.5, 2], "class labels"),
])
def test_bad_labels(c2i, cond, message):
    with pytest.raises(InputError, match=message):
        c2i(CODES, cond)
    with pytest.raises(InputError, match=message):
        sample(c2i, cond)


def test_labels_as_a_list_and_the_null_class_are_fine(c2i):
    assert c2i(CODES, [3, 10]).shape == (2, 16, 512)


@pytest.mark.parametrize(("cond", "message"), [
    (torch.zeros(2, 119, 32), r"shape \[B, 120, 32\]"),
    (torch.zeros(2, 120, 16), r"shape \[B, 120, 32\]"),
    (torch.zeros(120, 32), r"shape \[B, 120, 32\]"),
    (torch.zeros(2, 120, 32, dtype=torch.long), "float tensor"),
    (torch.tensor([1, 2]), "float tensor"),
    (torch.full((2, 120, 32), math.nan), "NaN or inf"),
])
def test_bad_captions(t2i, cond, message):
    with pytest.raises(InputError, match=message):
        t2i(CODES, cond)


def test_bad_caption_masks(t2i, c2i):
    caption = torch.zeros(2, 120, 32)
    with pytest.raises(InputError, match=r"cond_mask must be a tensor \[B, 120\]"):
        t2i(CODES, caption, cond_mask=torch.ones(2, 10, dtype=torch.bool))
    with pytest.raises(InputError, match="only 0/1"):
        t2i(CODES, caption, cond_mask=torch.full((2, 120), 2))
    with pytest.raises(InputError, match="c2i model takes labels only"):
        c2i(CODES, LABELS, cond_mask=torch.ones(2, 1, dtype=torch.bool))


@pytest.mark.parametrize(("options", "message"), [
    ({"cfg": 0.5}, "cfg must be a number >= 1"),
    ({"cfg": math.nan}, "cfg must be a number >= 1"),
    ({"cfg": "2"}, "cfg must be a number >= 1"),
    ({"cfg_interval": -2}, "cfg_interval"),
    ({"cfg_interval": 1.5}, "cfg_interval"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.0}, "top_k"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"temperature": 0.0}, "greedy=True"),
    ({"temperature": -1.0}, "greedy=True"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 1, "generator": torch.Generator()}, "seed or generator"),
    ({"num_tokens": 0}, r"num_tokens must be an integer in \[1, 16\]"),
    ({"num_tokens": 17}, r"num_tokens must be an integer in \[1, 16\]"),
])
def test_bad_sampling_options(c2i, options, message):
    with pytest.raises(InputError, match=message):
        sample(c2i, LABELS, **options)


def test_guidance_without_a_null_class_is_refused():
    model = build_gpt("gpt-test", class_dropout_prob=0.0).eval()
    assert model.cls_embedding.embedding_table.weight.shape[0] == 10  # no null row, as in LlamaGen
    assert sample(model, LABELS, cfg=1.0, seed=0).shape == (2, 16)
    with pytest.raises(InputError, match="no null class"):
        sample(model, LABELS, cfg=2.0)
    with pytest.raises(InputError, match="no null class"):
        cached_logits(model, CODES, LABELS, cfg=2.0)
    with pytest.raises(InputError, match=r"in \[0, 9\]"):
        model(CODES, torch.tensor([10, 0]))
    with pytest.raises(InputError, match="needs a null class"):
        model(CODES, LABELS, drop_cond=torch.ones(2, dtype=torch.bool))


def test_bad_drop_cond(c2i):
    with pytest.raises(InputError, match=r"drop_cond must be a bool tensor \[2\]"):
        c2i(CODES, LABELS, drop_cond=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize(("fields", "message"), [
    ({"dim": 60, "n_head": 4}, "multiple of 4"),
    ({"dim": 64, "n_head": 5}, "not divisible"),
    ({"n_kv_head": 5}, "must divide n_head"),
    ({"n_kv_head": 0}, "must divide n_head"),
    ({"block_size": 15}, "not a square"),
    ({"block_size": 1 << 40}, "over the limit"),
    ({"n_layer": 10**7}, "over the limit"),
    ({"dim": 0}, "positive integer"),
    ({"vocab_size": 2.5}, "positive integer"),
    ({"model_type": "t2v"}, "model_type"),
    ({"cls_token_num": 2}, "one condition token"),
    ({"resid_dropout_p": 1.0}, r"in \[0, 1\)"),
    ({"norm_eps": 0}, "norm_eps"),
    ({"ffn_dim_multiplier": -1}, "ffn_dim_multiplier"),
])
def test_invalid_configs(fields, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**fields)


def test_unknown_config_fields_and_names():
    with pytest.raises(ConfigError, match="'n_heads' \\(did you mean 'n_head'\\?\\)"):
        GPTConfig.from_dict({"n_heads": 4})
    with pytest.raises(ConfigError, match="unknown GPT size 'gpt-s'"):
        named_config("gpt-s")
    with pytest.raises(ConfigError, match="unknown GPT config field"):
        build_gpt("gpt-test", image_size=256)
    with pytest.raises(ConfigError, match="model_args"):
        GPTConfig.from_dict({"model_args": [1]})
    # LlamaGen's cache-sizing fields are accepted and ignored
    assert GPTConfig.from_dict({"max_batch_size": 32, "max_seq_len": 2048}) == GPTConfig()


def test_oversized_config_file(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"dim": 64' + " " * (1 << 20) + "}")
    with pytest.raises(ConfigError, match="over 1 MiB"):
        GPTConfig.from_json(path)
