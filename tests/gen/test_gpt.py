"""The GPT beyond the fixture: grouped-query attention in the KV cache, caption masks, the image-token hook,
CFG interval, training-mode behaviour, causality, and every registered size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.gen.conftest import relative_error
from toklip.gen import GENERATORS, GPT, build_gpt, cached_logits, sample
from toklip.gen.kv_cache import StaticKVCache


def randomized(model: GPT, seed: int = 0) -> GPT:
    """Every weight drawn at random (LlamaGen zero-initialises the head, which would make every logit 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def inputs(model: GPT, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    codes = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=gen)
    if cfg.model_type == "c2i":
        cond = torch.randint(0, cfg.num_classes, (batch,), generator=gen)
    else:
        cond = torch.randn(batch, cfg.cls_token_num, cfg.caption_dim, generator=gen)
    return codes, cond


@pytest.fixture(params=["gpt-test", "gpt-test-t2i"])
def name(request) -> str:
    return request.param


# ---- grouped-query attention -------------------------------------------------------------------------------
def test_gqa_kv_cache_matches_the_full_forward(name):
    """The official cache is sized with n_head and fails for n_kv_head < n_head; ours is sized with n_kv_head."""
    model = randomized(build_gpt(name, n_kv_head=2))
    codes, cond = inputs(model)
    cache = model.new_cache(2)
    assert cache.keys[0].shape == (2, 2, model.config.seq_len, model.config.head_dim)
    full = model(codes, cond)
    assert relative_error(cached_logits(model, codes, cond), full) < 1e-5
    guided = cached_logits(model, codes, cond, cfg=3.0)
    null = model(codes, model.null_condition(2))
    assert relative_error(guided, null + (full - null) * 3.0) < 1e-5
    assert sample(model, cond, cfg=3.0, seed=0).shape == (2, model.config.block_size)


def test_gqa_equals_multi_head_attention_with_shared_kv_heads():
    """n_kv_head = 1 is MHA whose 4 heads use the same key/value projection (LlamaGen's repeat_interleave)."""
    gqa = randomized(build_gpt("gpt-test", n_kv_head=1))
    mha = build_gpt("gpt-test").eval()
    hd, heads, dim = gqa.config.head_dim, gqa.config.n_head, gqa.config.dim
    state = dict(gqa.state_dict())
    for i in range(gqa.config.n_layer):
        w = state[f"layers.{i}.attention.wqkv.weight"]
        q, k, v = w.split([dim, hd, hd])
        state[f"layers.{i}.attention.wqkv.weight"] = torch.cat([q, k.repeat(heads, 1), v.repeat(heads, 1)])
    mha.load_state_dict(state)
    codes, cond = inputs(gqa)
    assert relative_error(gqa(codes, cond), mha(codes, cond)) < 1e-5


# ---- causality, prefixes, batches ---------------------------------------------------------------------------
def test_logits_are_causal_and_prefixes_work(name):
    model = randomized(build_gpt(name))
    codes, cond = inputs(model)
    full = model(codes, cond)
    for n in (1, 5, model.config.block_size):
        assert relative_error(model(codes[:, :n], cond), full[:, :n]) < 1e-5
    changed = codes.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % model.config.vocab_size
    assert torch.allclose(model(changed, cond)[:, :8], full[:, :8], atol=1e-6)  # logit i sees codes < i only
    assert not torch.allclose(model(changed, cond)[:, 8:], full[:, 8:], atol=1e-4)


def test_rows_are_independent_in_sampling(name):
    model = randomized(build_gpt(name))
    _, cond = inputs(model, batch=3)
    together = sample(model, cond, cfg=2.0, greedy=True)
    alone = sample(model, cond[1:2], cfg=2.0, greedy=True)
    assert torch.equal(together[1:2], alone)


# ---- t2i caption padding -----------------------------------------------------------------------------------
def test_caption_mask_hides_padded_caption_tokens():
    """LlamaGen left-pads captions and masks the padding out of attention (each position still sees itself)."""
    model = randomized(build_gpt("gpt-test-t2i"))
    codes, cond = inputs(model)
    mask = torch.zeros(2, 120, dtype=torch.bool)
    mask[0, -7:] = True
    mask[1, -30:] = True
    logits = model(codes, cond, cond_mask=mask)
    noisy = torch.where(mask[..., None], cond, torch.randn_like(cond) * 5)
    assert torch.allclose(model(codes, noisy, cond_mask=mask), logits, atol=1e-6)
    assert not torch.allclose(model(codes, noisy), model(codes, cond), atol=1e-4)  # without the mask it matters
    assert relative_error(cached_logits(model, codes, cond, cond_mask=mask), logits) < 1e-5
    all_real = torch.ones(2, 120, dtype=torch.bool)
    assert relative_error(model(codes, cond, cond_mask=all_real), model(codes, cond)) < 1e-5
    assert sample(model, cond, cond_mask=mask, cfg=2.0, seed=3).shape == (2, 16)


# ---- the image-token hook (where fused inputs plug in) --------------------------------------------------------
class ShiftedInputs(GPT):
    """A stand-in for a fused generator: image-token inputs change, the stream state is recorded."""

    def __init__(self, config):
        super().__init__(config)
        self.shift = torch.nn.Parameter(torch.full((config.dim,), 0.3))
        self.calls: list = []
        self.streams: list = []

    def start_image_stream(self, batch_size):
        self.streams.append(batch_size)
        return f"stream-{len(self.streams)}"

    def embed_image_tokens(self, codes, extra=None):
        self.calls.append((tuple(codes.shape), extra))
        return super().embed_image_tokens(codes) + self.shift


def test_image_tokens_enter_through_one_overridable_method(name):
    base = randomized(build_gpt(name))
    model = ShiftedInputs(base.config)
    model.load_state_dict({**base.state_dict(), "shift": model.shift.detach()})
    model.eval()
    codes, cond = inputs(model)
    shifted = model(codes, cond)
    assert not torch.allclose(shifted, base(codes, cond), atol=1e-4)
    assert model.calls[-1] == ((2, 15), None)  # teacher forcing: the whole prefix at once, no stream
    assert relative_error(cached_logits(model, codes, cond), shifted) < 1e-5
    model.calls.clear()
    sample(model, cond, cfg=2.5, seed=0)
    # with CFG the stream and every embedding call see the B real sequences, one token per step
    assert model.streams[-1] == 2
    assert model.calls == [((2, 1), f"stream-{len(model.streams)}")] * (model.config.block_size - 1)


# ---- CFG interval -------------------------------------------------------------------------------------------
def test_cfg_interval_turns_guidance_off_after_step_k(fixture_models, vectors_of):
    model, v = fixture_models["gpt-c2i"], vectors_of["gpt-c2i"]
    guided = cached_logits(model, v["codes"], v["cond"], cfg=2.5)
    plain = cached_logits(model, v["codes"], v["cond"])
    k = 3
    mixed = cached_logits(model, v["codes"], v["cond"], cfg=2.5, cfg_interval=k)
    # token 0 (prefill) and decode steps 0..k are guided: tokens 0..k+1; after that the conditional logits
    assert torch.equal(mixed[:, : k + 2], guided[:, : k + 2])
    assert relative_error(mixed[:, k + 2:], plain[:, k + 2:]) < 1e-5
    assert not torch.allclose(guided[:, k + 2:], plain[:, k + 2:], atol=1e-3)
    assert torch.equal(cached_logits(model, v["codes"], v["cond"], cfg=2.5, cfg_interval=-1), guided)


# ---- sampling options ---------------------------------------------------------------------------------------
def test_sampling_is_seeded_and_the_filters_act(fixture_models, vectors_of):
    model, cond = fixture_models["gpt-c2i"], vectors_of["gpt-c2i"]["cond"]
    a = sample(model, cond, cfg=2.0, seed=5)
    assert torch.equal(a, sample(model, cond, cfg=2.0, seed=5))
    assert not torch.equal(a, sample(model, cond, cfg=2.0, seed=6))
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(a, sample(model, cond, cfg=2.0, generator=gen))
    greedy = sample(model, cond, cfg=2.0, greedy=True)
    assert torch.equal(sample(model, cond, cfg=2.0, top_k=1, seed=1), greedy)
    assert torch.equal(sample(model, cond, cfg=2.0, top_p=1e-6, seed=1), greedy)
    assert torch.equal(sample(model, cond, cfg=2.0, temperature=1e-4, seed=1), greedy)
    assert torch.equal(sample(model, cond, cfg=2.0, greedy=True, num_tokens=5), greedy[:, :5])
    top5 = sample(model, cond, top_k=5, seed=2)
    assert top5.min() >= 0 and top5.max() < model.config.vocab_size


def test_sampling_from_a_training_model_uses_eval_mode_and_restores_it():
    model = randomized(build_gpt("gpt-test"))  # dropouts 0.1: active in training mode
    _, cond = inputs(model)
    expected = sample(model, cond, cfg=2.0, seed=0)
    model.train()
    assert torch.equal(sample(model, cond, cfg=2.0, seed=0), expected)
    assert model.training


# ---- training mode --------------------------------------------------------------------------------------------
def test_training_drops_conditions_with_class_dropout_prob(name):
    """Class dropout in training replaces the condition of rows where rand < p by the null input (CFG training)."""
    model = randomized(build_gpt(name, class_dropout_prob=0.5, token_dropout_p=0.0, resid_dropout_p=0.0,
                                 ffn_dropout_p=0.0))
    codes, cond = inputs(model, batch=8)
    torch.manual_seed(11)
    drop = torch.rand(8) < 0.5
    assert 0 < int(drop.sum()) < 8
    expected = model(codes, cond, drop_cond=drop)
    model.train()
    torch.manual_seed(11)
    logits = model(codes, cond)
    assert relative_error(logits, expected) < 1e-5
    loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert "cls_embedding.uncond_embedding" not in dict(model.named_parameters())  # a fixed buffer


def test_fresh_model_has_llamagen_init():
    torch.manual_seed(0)
    model = build_gpt("gpt-test")
    assert not model.output.weight.any()  # zero head: uniform first predictions
    std = model.tok_embeddings.weight.std().item()
    assert 0.015 < std < 0.025
    assert torch.equal(model.norm.weight, torch.ones(64))


# ---- every registered size ----------------------------------------------------------------------------------
LLAMAGEN_PARAMS = {"gpt-b": 111e6, "gpt-l": 343e6, "gpt-xl": 775e6, "gpt-xxl": 1.4e9, "gpt-3b": 3.1e9}


@pytest.mark.parametrize("generator", sorted(GENERATORS))
def test_every_registered_name_builds_on_the_meta_device(generator):
    from toklip.core.registry import ComponentSpec

    factory_path, summary = GENERATORS[generator]
    assert summary
    factory = ComponentSpec("fusion", generator, factory_path).load()  # resolves the "module:attr" string
    with torch.device("meta"):
        model = factory()
    assert isinstance(model, GPT)
    assert model.config.model_type == ("t2i" if generator.endswith("-t2i") else "c2i")
    n = sum(p.numel() for p in model.parameters())
    if generator in LLAMAGEN_PARAMS:
        assert abs(n - LLAMAGEN_PARAMS[generator]) / LLAMAGEN_PARAMS[generator] < 0.01


def test_factories_take_config_overrides():
    from toklip.gen.gpt import gpt_b, gpt_xl_t2i

    with torch.device("meta"):
        c2i = gpt_b(vocab_size=1024, block_size=576, n_kv_head=4, num_classes=10)
        t2i = gpt_xl_t2i(caption_dim=4096)
    assert c2i.output.weight.shape == (1024, 768) and c2i.num_tokens == 576
    assert c2i.layers[0].attention.wqkv.weight.shape == ((12 + 2 * 4) * 64, 768)
    assert c2i.cls_embedding.embedding_table.weight.shape == (11, 768)
    assert t2i.cls_embedding.cap_proj.fc1.weight.shape == (1280, 4096) and t2i.config.cls_token_num == 120


def test_importing_the_table_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, toklip.gen; toklip.gen.GENERATORS['gpt-b']; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    import toklip.gen

    assert set(toklip.gen.__all__) == {"GENERATORS", *toklip.gen._LAZY}
    assert all(getattr(toklip.gen, name) is not None for name in toklip.gen.__all__)


def test_cache_rejects_a_nonsense_size():
    from toklip.core.errors import InputError

    with pytest.raises(InputError, match="batch_size >= 1"):
        StaticKVCache(2, 0, 10, 4, 16, dtype=torch.float32)
