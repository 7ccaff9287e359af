"""The composition: placeholder expansion, masks and labels over batches with several images and variable lengths,
the masked_scatter merge, generation (KV cache, batching, streaming), the VQ baseline and feature layers."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip.vlm.conversation import IGNORE_INDEX, SIMPLE_CHAT_TEMPLATE

from .conftest import image


def test_placeholders_expand_with_several_images_and_variable_lengths(vlm):
    n, tag = vlm.num_image_tokens, vlm.config.image_token
    convs = [
        [{"from": "human", "value": f"{tag} and {tag} : what digit is this ?"}, {"from": "gpt", "value": "seven"}],
        [{"role": "user", "content": f"describe the image . {tag}"}, {"role": "assistant", "content": "a red seven"}],
        "what digit is this ?",  # text only
    ]
    imgs = [[image(0), image(1)], image(2), None]
    batch = vlm.prepare(convs, imgs)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert batch["images"].shape == (3, 3, 64, 64)
    assert [int((row == vlm.image_token_id).sum()) for row in ids] == [2 * n, n, 0]
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) == 3 and max(lengths) == ids.shape[1]  # variable lengths, padded to the longest
    for row, length in enumerate(lengths):  # right padding: real tokens first, then pad with mask 0 and no label
        assert mask[row, :length].all() and not mask[row, length:].any()
        assert (ids[row, length:] == vlm.tokenizer.pad_token_id).all()
        assert (labels[row, length:] == IGNORE_INDEX).all()
    assert (labels[ids == vlm.image_token_id] == IGNORE_INDEX).all()
    # each placeholder is one contiguous block of n positions
    first = (ids[0] == vlm.image_token_id).nonzero().flatten()
    assert (first[n - 1] - first[0]).item() == n - 1 and (first[-1] - first[n]).item() == n - 1

    embeds = vlm.embed(ids, batch["images"])
    with torch.no_grad():
        projected = vlm.encode_images(batch["images"])  # [3, n, H], in placeholder order
    torch.testing.assert_close(embeds[0][ids[0] == vlm.image_token_id], projected[:2].reshape(2 * n, -1))
    torch.testing.assert_close(embeds[1][ids[1] == vlm.image_token_id], projected[2])
    text = ids != vlm.image_token_id
    torch.testing.assert_close(embeds[text], vlm.llm.get_input_embeddings()(ids[text]))


def test_labels_are_the_replies_and_their_end_of_turn_only(vlm):
    conv = [{"from": "human", "value": "<image>\nwhat digit is this ?"}, {"from": "gpt", "value": "seven"},
            {"from": "human", "value": "what colour is the ink ?"}, {"from": "gpt", "value": "red"}]
    batch = vlm.prepare([conv], [image(0)])
    labels = batch["labels"][0]
    kept = labels[labels != IGNORE_INDEX].tolist()
    assert vlm.tokenizer.decode(kept) == "seven </s> red </s>"
    # the prompt tokens just before each reply ("assistant :") are not learned
    ids = batch["input_ids"][0]
    starts = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX]
    assert [vlm.tokenizer.decode(ids[s - 2:s]) for s in starts] == ["assistant :", "assistant :"]


def test_a_tokenizer_without_a_chat_template_gets_the_simple_one_and_its_own_is_kept(vlm, llm_dir):
    assert vlm.tokenizer.chat_template == SIMPLE_CHAT_TEMPLATE
    from transformers import AutoTokenizer

    from toklip.vlm.conversation import encode_conversation

    tok = AutoTokenizer.from_pretrained(llm_dir)
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant{% endif %}")
    conv = [{"role": "user", "content": "<image> what digit is this ?"}, {"role": "assistant", "content": "two"}]
    enc = encode_conversation(tok, conv, num_image_tokens=4)
    kept = enc.labels[enc.labels != IGNORE_INDEX].tolist()
    assert tok.decode(kept) == "two </s>"
    assert enc.num_images == 1 and int((enc.input_ids == tok.convert_tokens_to_ids("<image>")).sum()) == 4


def test_generation_with_a_kv_cache_equals_generation_without(vlm):
    prompts, imgs = ["what digit is this ?"], [[image(3)]]
    chat = [[{"role": "user", "content": "<image>\nwhat digit is this ?"}]]
    cached = vlm.generate_ids(chat, imgs, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = vlm.generate_ids(chat, imgs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    # and both equal a plain greedy loop that re-runs the whole sequence every step
    batch = vlm.prepare(chat, imgs, add_generation_prompt=True)
    embeds = vlm.embed(batch["input_ids"], batch["images"])
    table = vlm.llm.get_input_embeddings()
    out = []
    with torch.no_grad():
        for _ in range(cached.shape[1]):
            nxt = vlm.llm(inputs_embeds=embeds).logits[:, -1].argmax(-1)
            out.append(int(nxt))
            embeds = torch.cat([embeds, table(nxt)[:, None]], dim=1)
            if int(nxt) == vlm.tokenizer.eos_token_id:
                break
    assert cached[0, : len(out)].tolist() == out
    assert prompts  # the chat form above is what chat() builds from a prompt


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(vlm):
    prompts = ["<image>\nwhat digit is this ?", "describe the image . <image> and <image> what colour is the ink ?",
               "what digit is this ?"]
    imgs = [[image(4)], [image(5), image(6)], None]
    together = vlm.generate_ids(prompts, imgs, max_new_tokens=6, do_sample=False)
    for i in range(3):
        alone = vlm.generate_ids([prompts[i]], [imgs[i]], max_new_tokens=6, do_sample=False)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist()


def test_chat_returns_text_and_streams_the_same_text(vlm):
    reply = vlm.chat(image(7), "what digit is this ?", max_new_tokens=6, do_sample=False)
    assert isinstance(reply, str) and reply
    pieces = list(vlm.chat(image(7), "what digit is this ?", max_new_tokens=6, stream=True, do_sample=False))
    assert len(pieces) >= 1 and "".join(pieces).strip() == reply
    # without a placeholder the image goes first: the same as writing it there
    assert vlm.chat(image(7), "<image>\nwhat digit is this ?", max_new_tokens=6, do_sample=False) == reply


def test_vq_baseline_is_one_option_away(llm_dir):
    from toklip.vlm.model import build_vlm

    torch.manual_seed(0)
    model = toklip.build("toklip-test")
    vq = build_vlm(tokenizer=model, llm=llm_dir, features="vq")
    tk = build_vlm(tokenizer=model, llm=llm_dir)
    x = image(0)[None]
    codes = vq.features(x)
    assert codes.shape == (1, 64, model.vq.code_dim) and vq.projector[0].in_features == model.vq.code_dim
    torch.testing.assert_close(codes, model.tokenize(x).codes.float())
    assert tk.features(x).shape == (1, 64, model.token_encoder.width)
    assert vq.chat(image(0), "what digit is this ?", max_new_tokens=3, do_sample=False) is not None


def test_feature_layer_selects_a_hidden_state_of_the_token_encoder(vlm):
    from toklip.vlm.features import ImageFeatures

    model = vlm.toklip
    x = image(1)[None]
    captured = []
    handle = model.token_encoder.blocks[-2].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        model.tokenize(x)
    finally:
        handle.remove()
    penultimate = ImageFeatures(model, feature_layer=-2)(x)  # the penultimate block's output (LLaVA's choice)
    depth = len(model.token_encoder.blocks)
    torch.testing.assert_close(penultimate, ImageFeatures(model, feature_layer=depth - 1)(x))
    last_block = ImageFeatures(model, feature_layer=depth)(x)
    assert not torch.allclose(last_block, ImageFeatures(model, feature_layer=-1)(x))  # the final norm differs
    torch.testing.assert_close(ImageFeatures(model, feature_layer=depth - 1)(x), captured[0][:, :64])
    with pytest.raises(toklip.ConfigError, match="out of range"):
        ImageFeatures(model, feature_layer=depth + 1)
