"""Bad inputs are toklip errors that name the problem and the fix, never a raw traceback from deep inside."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip.vlm.model import build_vlm

from .conftest import image


def test_an_image_without_a_placeholder(vlm):
    with pytest.raises(toklip.InputError, match="no '<image>' placeholder"):
        vlm.prepare(["what digit is this ?"], [image(0)])


def test_more_placeholders_than_images(vlm):
    with pytest.raises(toklip.InputError, match=r"2 '<image>' placeholder\(s\) but 1 image"):
        vlm.prepare(["<image> <image> what digit is this ?"], [[image(0)]])
    with pytest.raises(toklip.InputError, match="no image was given"):
        vlm.prepare(["<image> what digit is this ?"])
    with pytest.raises(toklip.InputError, match="placeholder"):
        vlm.chat([image(0)], "<image> and <image>", max_new_tokens=1)


def test_embed_refuses_ids_and_images_that_disagree(vlm):
    batch = vlm.prepare(["<image> what digit is this ?"], [image(0)])
    with pytest.raises(toklip.InputError, match="1 images of 64 tokens.*2 image"):
        vlm.embed(batch["input_ids"], torch.stack([image(0), image(1)]))


def test_a_missing_image_file(vlm, tmp_path):
    with pytest.raises(toklip.InputError, match="nope.png"):
        vlm.chat(tmp_path / "nope.png", "what digit is this ?", max_new_tokens=1)


def test_a_reply_holding_an_image(vlm):
    with pytest.raises(toklip.InputError, match="images go in user turns"):
        vlm.prepare([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<image>"}]], [image(0)])


def test_bad_turns(vlm):
    with pytest.raises(toklip.InputError, match="unknown role 'robot'"):
        vlm.prepare([[{"from": "robot", "value": "hi"}]])
    with pytest.raises(toklip.InputError, match="must be a string or a list"):
        vlm.prepare([42])


def test_an_unknown_projector_suggests_the_right_one(llm_dir):
    with pytest.raises(toklip.UnknownComponentError, match="Did you mean 'mlp2x_gelu'"):
        build_vlm(tokenizer="toklip-test", llm=llm_dir, projector="mlp2x_gleu")


def test_bad_options(llm_dir, tmp_path):
    with pytest.raises(toklip.ConfigError, match="features must be one of"):
        build_vlm(tokenizer="toklip-test", llm=llm_dir, features="pixels")
    with pytest.raises(toklip.ConfigError, match="out of range"):
        build_vlm(tokenizer="toklip-test", llm=llm_dir, feature_layer=9)
    with pytest.raises(toklip.ConfigError, match="neither an existing folder nor a hub repo id"):
        build_vlm(tokenizer="toklip-test", llm=str(tmp_path / "no" / "such" / "llm"))
    with pytest.raises(toklip.ConfigError, match="TokLIP model"):
        build_vlm(tokenizer=torch.nn.Linear(2, 2), llm=llm_dir)


def test_a_language_model_with_only_pickled_weights_is_refused(llm_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in llm_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(toklip.CheckpointError, match="no pickled"):
        build_vlm(tokenizer="toklip-test", llm=folder)


def test_a_hub_id_offline_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(toklip.WeightsNotFoundError, match=r"acme/tiny-llm.*llm='/path/to/folder'"):
        build_vlm(tokenizer="toklip-test", llm="acme/tiny-llm")
