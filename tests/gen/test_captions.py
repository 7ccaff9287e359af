"""Text-conditional generation end to end: the T5 caption encoder (LlamaGen's left-padded layout), generate(prompts=),
save/load re-attaching the encoder, `toklip generate --prompt`, and bad input. A tiny T5 (32-d, gpt-test-t2i's
caption_dim) with a locally trained tokenizer: nothing is downloaded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import toklip
from toklip import CheckpointError, ConfigError, InputError
from toklip.gen.captions import MAX_PROMPT_CHARS, MAX_PROMPTS, CaptionEncoder, left_pad
from toklip.vlm.tiny import make_tiny_t5_encoder

WORDS = ["a red fox in the snow", "a blue car on the road", "a cat", "two dogs play with a ball in the park"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_tiny_t5_encoder(tmp_path_factory.mktemp("t5") / "tiny-t5", WORDS)


@pytest.fixture(scope="module")
def encoder(t5_dir):
    return CaptionEncoder.from_pretrained(t5_dir)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return toklip.build("toklip-test")


def t2i_generator(tok, caption_encoder, **kw):
    torch.manual_seed(1)
    gen = toklip.build_generator("gpt-test-t2i", tokenizer=tok, caption_encoder=caption_encoder, **kw)
    with torch.no_grad():  # LlamaGen zero-inits the head (every logit equal): give it weights so outputs can differ
        gen.output.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return gen.eval()


def unpadded(encoder, text):
    """T5's features of one prompt encoded alone, without any padding: what the left-padded rows must hold."""
    ids = encoder.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder.model(input_ids=ids).last_hidden_state[0]


# ---------------------------------------------------------------------------------------------- the encoder
def test_encode_is_left_padded_with_zeros_as_llamagen_trains(encoder):
    prompts = ["a cat", "two dogs play with a ball in the park"]
    features, mask = encoder.encode(prompts)
    assert features.shape == (2, 120, 32) and features.dtype == torch.float32
    assert mask.shape == (2, 120) and mask.dtype == torch.bool
    for row, text in enumerate(prompts):
        want = unpadded(encoder, text)  # words + </s>
        k = want.shape[0]
        assert k == len(text.split()) + 1
        assert not mask[row, : 120 - k].any() and mask[row, 120 - k :].all()  # real tokens last
        assert torch.equal(features[row, : 120 - k], torch.zeros(120 - k, 32))  # padded rows are exactly zero
        # the real rows, in order, equal the prompt encoded alone: batch-mates and padding change nothing
        torch.testing.assert_close(features[row, 120 - k :], want, rtol=1e-5, atol=1e-5)


def test_left_pad_moves_each_rows_tokens_to_the_end():
    features = torch.arange(1, 13, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    moved, left = left_pad(features, mask)
    assert left.tolist() == [[False, False, True], [True, True, True]]
    assert moved[0].tolist() == [[0, 0], [0, 0], [1, 2]] and torch.equal(moved[1], features[1])


def test_long_prompts_are_truncated_at_the_generators_condition_length(encoder, tok):
    long = " ".join(["a red fox in the snow"] * 40)  # 240 words
    features, mask = encoder.encode([long])
    assert mask.all() and features.shape == (1, 120, 32)
    short, short_mask = encoder.encode([long], length=8)  # 7 words + </s>, as T5's tokenizer truncates
    ids = encoder.tokenizer(long, max_length=8, truncation=True, return_tensors="pt").input_ids
    assert ids[0, -1].item() == encoder.tokenizer.eos_token_id and short_mask.all()
    with torch.no_grad():
        torch.testing.assert_close(short[0], encoder.model(input_ids=ids).last_hidden_state[0], rtol=1e-5, atol=1e-5)
    gen = t2i_generator(tok, encoder, cls_token_num=8)
    from toklip.gen.generator import encode_prompts

    cond, cond_mask = encode_prompts(gen, [long, "a cat"])
    assert cond.shape == (2, 8, 32) and cond_mask.sum(1).tolist() == [8, 3]


def test_prompts_are_lowercased_and_spaces_collapsed_as_llamagen_cleans_them(encoder, t5_dir):
    a, _ = encoder.encode(["a red fox"])
    b, _ = encoder.encode(["  A   RED fox "])
    assert torch.equal(a, b)
    cased = CaptionEncoder.from_pretrained(t5_dir, lowercase=False)
    assert not torch.equal(cased.encode(["A RED fox"])[0], a)  # "A", "RED" are unknown words to this tokenizer


def test_the_encoder_width_must_be_the_generators_caption_dim(tok, tmp_path):
    narrow = make_tiny_t5_encoder(tmp_path / "t5-16", WORDS, width=16)
    with pytest.raises(ConfigError, match=r"16-d features.*caption_dim=32"):
        toklip.build_generator("gpt-test-t2i", tokenizer=tok, caption_encoder=narrow)
    gen = toklip.build_generator("gpt-test-t2i", tokenizer=tok, caption_encoder=narrow, caption_dim=16)
    assert gen.config.caption_dim == 16


def test_only_t5_safetensors_folders_load(tmp_path, t5_dir):
    from toklip.vlm.tiny import make_tiny_llm

    with pytest.raises(ConfigError, match="T5 encoder"):
        CaptionEncoder.from_pretrained(make_tiny_llm(tmp_path / "llama", WORDS))
    pickled = tmp_path / "pickled"
    shutil.copytree(t5_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors"):
        CaptionEncoder.from_pretrained(pickled)
    with pytest.raises(ConfigError, match="does not exist here"):
        CaptionEncoder.from_pretrained(tmp_path / "nowhere" / "t5")


@pytest.mark.parametrize(("prompts", "message"), [
    ([], "empty"),
    ("a red fox", r"list of strings.*\[prompt\]"),
    ([3], "prompt 0 is int"),
    (["a cat", None], "prompt 1 is NoneType"),
    (["a cat", "   "], "prompt 1 is empty"),
    (["x" * (MAX_PROMPT_CHARS + 1)], f"limit of {MAX_PROMPT_CHARS}"),
    (["a cat"] * (MAX_PROMPTS + 1), f"limit of {MAX_PROMPTS}"),
])
def test_bad_prompts_are_input_errors(encoder, prompts, message):
    with pytest.raises(InputError, match=message):
        encoder.encode(prompts)


# ---------------------------------------------------------------------------------------------- generation
def test_generate_from_prompts_is_seeded_and_the_prompt_reaches_the_images(tok, encoder):
    gen = t2i_generator(tok, encoder)
    a = gen.generate(prompts=["a red fox", "a cat"], cfg=2.0, seed=0)
    assert a.shape == (2, 3, tok.image_size, tok.image_size) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, gen.generate(prompts=["a red fox", "a cat"], cfg=2.0, seed=0))
    assert not torch.equal(a, gen.generate(prompts=["a red fox", "a cat"], cfg=2.0, seed=1))
    other = gen.generate(prompts=["a blue car on the road", "a cat"], cfg=2.0, seed=0)
    assert not torch.equal(a[0], other[0])
    # the same as encoding by hand and sampling the caption features with their mask
    cond, mask = encoder.encode(["a red fox", "a cat"], length=120)
    codes = gen.sample(cond, cond_mask=mask, cfg=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, tok.decode(codes).clamp(-1, 1))
    assert torch.equal(gen.generate(prompts=["a red fox", "a cat"], cfg=2.0, seed=0, batch_size=1)[0],
                       gen.generate(prompts=["a red fox"], cfg=2.0, seed=0)[0])


def test_cfg_guides_against_the_models_unconditional_caption(tok, encoder):
    gen = t2i_generator(tok, encoder)
    cond, mask = encoder.encode(["a red fox"], length=120)
    other, _ = encoder.encode(["two dogs play with a ball in the park"], length=120)
    codes = torch.randint(0, gen.config.vocab_size, (1, gen.num_tokens), generator=torch.Generator().manual_seed(0))
    drop = torch.tensor([True])
    from toklip.gen.sampling import cached_logits

    guided = cached_logits(gen, codes, cond, cfg=3.0, cond_mask=mask)
    with torch.no_grad():
        c = gen(codes, cond, cond_mask=mask)
        u = gen(codes, cond, cond_mask=mask, drop_cond=drop)  # the uncond caption under the prompt's mask
        # a dropped caption is the uncond caption whatever the prompt was (LlamaGen's token_drop keeps the mask)
        torch.testing.assert_close(gen(codes, other, cond_mask=mask, drop_cond=drop), u)
    torch.testing.assert_close(guided, u + 3.0 * (c - u), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached_logits(gen, codes, cond, cond_mask=mask), c, rtol=1e-5, atol=1e-5)  # cfg 1
    with torch.no_grad():
        gen.cls_embedding.uncond_embedding.mul_(-1)
    assert not torch.allclose(cached_logits(gen, codes, cond, cfg=3.0, cond_mask=mask), guided)


def test_the_caption_encoder_stays_out_of_the_state_dict_and_training(tok, encoder):
    gen = t2i_generator(tok, encoder).train()
    assert not any(k.startswith(("encoder.", "shared.")) or "caption_encoder" in k for k in gen.state_dict())
    assert not any(p is q for p in gen.parameters() for q in encoder.model.parameters())
    cond, mask = encoder.encode(["a cat", "a red fox"], length=120)
    codes = torch.randint(0, gen.config.vocab_size, (2, gen.num_tokens))
    torch.nn.functional.cross_entropy(gen(codes, cond, cond_mask=mask).flatten(0, 1), codes.flatten()).backward()
    assert gen.cls_embedding.cap_proj.fc1.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in encoder.model.parameters())


def test_save_and_load_reattach_the_recorded_encoder(tok, encoder, t5_dir, tmp_path):
    gen = t2i_generator(tok, encoder)
    toklip.gen.save_generator(gen, tmp_path / "g")
    record = json.loads((tmp_path / "g" / "generator.json").read_text())
    assert record["caption_encoder"] == {"source": str(t5_dir.resolve()), "lowercase": True, "width": 32}
    want = gen.generate(prompts=["a red fox"], cfg=2.0, seed=3)
    back = toklip.load_generator(tmp_path / "g", tokenizer=tok)
    assert torch.equal(back.generate(prompts=["a red fox"], cfg=2.0, seed=3), want)
    # the encoder moved: a clear error naming the fix, and the override
    moved = tmp_path / "moved-t5"
    shutil.copytree(t5_dir, moved)
    record["caption_encoder"]["source"] = str(tmp_path / "gone")
    (tmp_path / "g" / "generator.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"(?s)records its caption encoder.*caption_encoder=PATH"):
        toklip.load_generator(tmp_path / "g", tokenizer=tok)
    again = toklip.load_generator(tmp_path / "g", tokenizer=tok, caption_encoder=moved)
    assert torch.equal(again.generate(prompts=["a red fox"], cfg=2.0, seed=3), want)
    bare = toklip.load_generator(tmp_path / "g", tokenizer=tok, caption_encoder=False)
    with pytest.raises(InputError, match="no caption encoder"):
        bare.generate(prompts=["a red fox"])


def test_a_llamagen_t2i_release_file_loads_with_a_caption_encoder(tok, encoder, tmp_path):
    gen = t2i_generator(tok, encoder)
    torch.save({"model": gen.state_dict()}, tmp_path / "t2i_test.pt")
    back = toklip.load_generator(tmp_path / "t2i_test.pt", config="gpt-test-t2i", tokenizer=tok, caption_encoder=encoder,
                                 vocab_size=tok.vq.vocab_size, block_size=gen.num_tokens)
    assert torch.equal(back.generate(prompts=["a cat"], seed=0), gen.generate(prompts=["a cat"], seed=0))


def test_prompts_and_labels_go_to_the_right_kind_of_generator(tok, encoder):
    t2i = t2i_generator(tok, encoder)
    c2i = toklip.build_generator("gpt-test", tokenizer=tok, num_classes=10)
    with pytest.raises(InputError, match="class-conditional"):
        c2i.generate(prompts=["a cat"])
    with pytest.raises(InputError, match="one of labels"):
        t2i.generate(labels=[1], prompts=["a cat"])
    with pytest.raises(InputError, match="caption features"):
        t2i.generate(labels=[1])
    with pytest.raises(InputError, match="prompt 0 is empty"):
        t2i.generate(prompts=[""])
    with pytest.raises(InputError, match="cond_mask goes with cond"):
        t2i.generate(prompts=["a cat"], cond_mask=torch.ones(1, 120, dtype=torch.bool))
    with pytest.raises(ConfigError, match="text-conditional generators"):
        toklip.build_generator("gpt-test", tokenizer=tok, num_classes=10, caption_encoder=encoder)
    with pytest.raises(InputError, match="no caption encoder"):
        toklip.build_generator("gpt-test-t2i", tokenizer=tok).generate(prompts=["a cat"])


# ---------------------------------------------------------------------------------------------- the command
def test_generate_command_with_prompts(tok, encoder, tmp_path, capsys):
    from toklip.cli import cli, main

    toklip.gen.save_generator(t2i_generator(tok, encoder), tmp_path / "g")
    res = CliRunner().invoke(cli, ["generate", str(tmp_path / "g"), "--tokenizer", "toklip-test", "--prompt",
                                   "a red fox", "--prompt", "a cat", "--n", "2", "--cfg", "2", "--seed", "1",
                                   "-o", str(tmp_path / "s.png"), "--each", str(tmp_path / "each")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])  # stderr may hold warnings
    assert report["images"] == 4 and Image.open(tmp_path / "s.png").size == (2 * 64, 2 * 64)
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [
        "00000_prompt0.png", "00001_prompt0.png", "00002_prompt1.png", "00003_prompt1.png"]
    capsys.readouterr()
    for args, message in [(["--class", "1"], "text-conditional (t2i): give --prompt"),
                          ([], "give --class N"), (["--class", "1", "--prompt", "a cat"], "not both")]:
        with pytest.raises(SystemExit) as e:
            main(["generate", str(tmp_path / "g"), "--tokenizer", "toklip-test", *args, "-o", str(tmp_path / "x.png")])
        assert e.value.code != 0 and message in capsys.readouterr().err
    toklip.gen.save_generator(toklip.build_generator("gpt-test", tokenizer=tok, num_classes=10), tmp_path / "c2i")
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "c2i"), "--tokenizer", "toklip-test", "--prompt", "a cat"])
    assert "class-conditional (c2i): give --class" in capsys.readouterr().err


def test_eval_fid_of_a_t2i_generator_samples_the_prompt_file(tok, encoder, tmp_path, capsys):
    from toklip.cli import main

    toklip.gen.save_generator(t2i_generator(tok, encoder), tmp_path / "g")
    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    (tmp_path / "captions.txt").write_text("a red fox\n\na cat on a mat\n", encoding="utf-8")
    args = ["eval", "fid", str(tmp_path / "g"), "--reference", str(ref), "--n", "4", "--space", "toklip",
            "--tokenizer", "toklip-test", "--batch-size", "2"]
    main([*args, "--prompts", str(tmp_path / "captions.txt"), "--out", str(tmp_path / "fid.json")])
    res = json.loads((tmp_path / "fid.json").read_text())
    assert res["n"] == 4 and res["fid"] > 0 and res["sampling"]["num_prompts"] == 2  # the blank line is skipped
    assert len(res["sampling"]["prompts_sha256"]) == 64
    capsys.readouterr()
    for extra, message in [([], "needs --prompts FILE"), (["--prompts", str(tmp_path / "captions.txt"),
                                                            "--classes", "3"], "--classes is for class-conditional")]:
        with pytest.raises(SystemExit):
            main([*args, *extra])
        assert message in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main([*args, "--prompts", str(tmp_path / "empty.txt")])
    assert "holds no prompt" in capsys.readouterr().err
