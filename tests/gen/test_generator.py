"""build_generator / load_generator / generate, and fused inputs fusion(E_tok[x_i], s_i) with a frozen causal TokLIP."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip import ConfigError, InputError
from toklip.gen.sampling import cached_logits


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return toklip.build("toklip-test")


def fused(tok, fusion="concat", **kw):
    torch.manual_seed(1)
    return randomized(toklip.build_generator("gpt-test", tokenizer=tok, fusion=fusion, num_classes=10, **kw))


def randomized(gen):
    """LlamaGen initialises the output head to zero (every logit 0): give it weights, so comparisons can fail."""
    with torch.no_grad():
        gen.output.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return gen


def codes_for(gen, batch=2, seed=0):
    return torch.randint(0, gen.config.vocab_size, (batch, gen.num_tokens), generator=torch.Generator().manual_seed(seed))


def test_generators_are_a_component_kind():
    names = toklip.list_components("generator")
    assert {"gpt-b", "gpt-xl", "gpt-3b", "gpt-test", "gpt-b-t2i", "gpt-test-t2i"} <= set(names)
    assert toklip.get_spec("generator", "gpt-b").provider.plugin == "builtin"


def test_sizes_come_from_the_tokenizer(tok):
    gen = toklip.build_generator("gpt-test", tokenizer=tok, num_classes=10)
    assert gen.config.vocab_size == tok.vq.vocab_size and gen.num_tokens == tok.grid[0] * tok.grid[1]
    assert gen.image_inputs is None  # fusion=None: plain LlamaGen inputs, LlamaGen's keys
    assert not any(k.startswith("image_inputs") for k in gen.state_dict())
    with pytest.raises(ConfigError, match="vocab_size=99 does not fit the tokenizer"):
        toklip.build_generator("gpt-test", tokenizer=tok, vocab_size=99)


@pytest.mark.parametrize("fusion", ["sum", "weighted_sum", "concat"])
def test_fused_teacher_forcing_equals_kv_cached_decoding(tok, fusion):
    gen = fused(tok, fusion).eval()
    codes = codes_for(gen)
    with torch.no_grad():
        logits = gen(codes, [1, 7])
    torch.testing.assert_close(cached_logits(gen, codes, [1, 7]), logits, rtol=1e-5, atol=1e-5)
    plain = toklip.build_generator("gpt-test", tokenizer=tok, num_classes=10).eval()
    plain.load_state_dict({k: v for k, v in gen.state_dict().items() if not k.startswith("image_inputs")})
    with torch.no_grad():
        assert not torch.allclose(plain(codes, [1, 7]), logits)  # the TokLIP features do reach the logits


def test_fused_input_of_token_i_is_the_fusion_of_its_embedding_and_its_causal_feature(tok):
    gen = fused(tok).eval()
    codes = codes_for(gen, batch=1)
    with torch.no_grad():
        got = gen.embed_image_tokens(codes[:, :-1])
        feats = tok.tokenize_indices(codes).features[:, :-1]  # the causal forward of the whole grid
        want = gen.image_inputs.fusion(gen.tok_embeddings(codes[:, :-1]), feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_the_fusion_trains_and_toklip_stays_out_of_the_checkpoint(tok):
    gen = fused(tok).train()
    codes = codes_for(gen)
    loss = torch.nn.functional.cross_entropy(gen(codes, [1, 2]).flatten(0, 1), codes.flatten())
    loss.backward()
    assert gen.image_inputs.fusion.proj.weight.grad is not None
    assert all(p.grad is None for p in tok.parameters())
    keys = set(gen.state_dict())
    assert {"image_inputs.fusion.proj.weight", "image_inputs.fusion.proj.bias"} <= keys
    assert not any("token_encoder" in k or k.startswith("image_inputs.tokenizer") for k in keys)


def test_a_bidirectional_toklip_is_refused(tok):
    bidi = toklip.build("toklip-test", attention="bidirectional")
    with pytest.raises(ConfigError, match="causal TokLIP"):
        toklip.build_generator("gpt-test", tokenizer=bidi, fusion="concat", num_classes=10)
    with pytest.raises(ConfigError, match="needs the TokLIP"):
        toklip.build_generator("gpt-test", fusion="concat")


def test_cfg_sampling_computes_each_real_tokens_feature_once(tok):
    gen = fused(tok).eval()
    rows = []
    original = type(tok.stream(1)).step

    def counting(self, indices):
        rows.append(indices.reshape(indices.shape[0], -1).shape)
        return original(self, indices)

    type(tok.stream(1)).step = counting
    try:
        gen.sample([1, 2, 3], cfg=3.0, seed=0)
    finally:
        type(tok.stream(1)).step = original
    assert rows == [(3, 1)] * (gen.num_tokens - 1)  # batch 3, never the CFG-doubled 6; one row per step


def test_generate_decodes_seeded_images(tok):
    gen = fused(tok)
    a = gen.generate(labels=[3, 4], cfg=2.0, seed=0)
    assert a.shape == (2, 3, tok.image_size, tok.image_size) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, gen.generate(labels=[3, 4], cfg=2.0, seed=0))
    assert not torch.equal(a, gen.generate(labels=[3, 4], cfg=2.0, seed=1))
    codes = gen.sample([3, 4], cfg=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, tok.decode(codes).clamp(-1, 1))
    with pytest.raises(InputError, match="labels"):
        gen.generate(cfg=2.0)
    plain = toklip.build_generator("gpt-test", num_classes=10)
    with pytest.raises(InputError, match="tokenizer"):
        plain.generate(labels=[1])


def test_save_and_load_round_trip_and_the_vq_is_checked(tok, tmp_path):
    gen = fused(tok, "weighted_sum", feature_layer=1).eval()
    toklip.gen.save_generator(gen, tmp_path / "g")
    back = toklip.load_generator(tmp_path / "g", tokenizer=tok)
    codes = codes_for(gen)
    with torch.no_grad():
        torch.testing.assert_close(back(codes, [0, 9]), gen(codes, [0, 9]), rtol=0, atol=0)
    assert back.image_inputs.layer == 1 and back.image_inputs.fusion_name == "weighted_sum"
    torch.manual_seed(5)
    other = toklip.build("toklip-test")  # same architecture, other VQ weights
    with pytest.raises(ConfigError, match="another VQ"):
        toklip.load_generator(tmp_path / "g", tokenizer=other)


def test_a_llamagen_release_file_loads_with_a_tokenizer(tok, tmp_path):
    gen = randomized(toklip.build_generator("gpt-test", tokenizer=tok, num_classes=10)).eval()
    torch.save({"model": gen.state_dict()}, tmp_path / "c2i_test.pt")
    back = toklip.load_generator(tmp_path / "c2i_test.pt", config="gpt-test", tokenizer=tok, num_classes=10,
                                 vocab_size=tok.vq.vocab_size, block_size=gen.num_tokens)
    codes = codes_for(gen)
    with torch.no_grad():
        torch.testing.assert_close(back(codes, [0, 1]), gen(codes, [0, 1]), rtol=0, atol=0)
    assert back.generate(labels=[2], seed=0).shape[0] == 1


def test_a_plugin_registers_a_generator_through_the_hook(tok):
    class WideGPT:
        @toklip.hookimpl
        def register_generators(self, register):
            register("wide-gpt-test", "toklip.gen.gpt:gpt_test", defaults={"dim": 128}, summary="a wider gpt-test")

    with toklip.temp_plugin(WideGPT(), name="wide-gpt"):
        assert "wide-gpt-test" in toklip.list_components("generator")
        assert toklip.get_spec("generator", "wide-gpt-test").provider.plugin == "wide-gpt"
        gen = toklip.build_generator("wide-gpt-test", tokenizer=tok, fusion="sum", num_classes=10)
        assert gen.config.dim == 128 and gen.image_inputs.fusion_name == "sum"
    assert "wide-gpt-test" not in toklip.list_components("generator")


def test_hostile_generator_folders_are_refused_before_anything_is_built(tok, tmp_path):
    import json

    gen = fused(tok).eval()
    toklip.gen.save_generator(gen, tmp_path / "g")
    record = json.loads((tmp_path / "g" / "generator.json").read_text())
    for name, change in [("format", {"format": "something-else"}),
                         ("huge", {"config": {**record["config"], "dim": 1 << 30}}),
                         ("unknown-field", {"config": {**record["config"], "__class__": "os.system"}})]:
        bad = tmp_path / name
        bad.mkdir()
        (bad / "model.safetensors").write_bytes((tmp_path / "g" / "model.safetensors").read_bytes())
        (bad / "generator.json").write_text(json.dumps({**record, **change}))
        with pytest.raises(ConfigError):
            toklip.load_generator(bad, tokenizer=tok)
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that runs code
    with pytest.raises(toklip.CheckpointError):
        toklip.load_generator(tmp_path / "pickle.pt", config="gpt-test", tokenizer=tok)
