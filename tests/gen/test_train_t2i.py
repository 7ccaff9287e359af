"""The ``gen`` task on captions (t2i): tokenized captioned data or captioned images, the frozen T5 encoding each
batch, checkpoints without the encoder that ``load_generator`` re-attaches it to, exact resume, the example config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

import toklip
from tests.gen.test_train import check_resume_is_exact
from tests.gen.test_train import config as c2i_config
from toklip import ConfigError
from toklip.train.config import TrainConfig
from toklip.train.trainer import train
from toklip.vlm.tiny import make_tiny_t5_encoder

CAPTIONS = ["a red fox in the snow", "a blue car on the road", "a cat on a mat", "two dogs in the park"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 captioned 64 px images (name.png + name.txt), their tokens, a class folder, and a tiny T5 (32-d)."""
    root = tmp_path_factory.mktemp("t2i-data")
    rng = np.random.default_rng(0)
    (root / "captioned").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "captioned" / f"{i}.png")
        (root / "captioned" / f"{i}.txt").write_text(CAPTIONS[i % 4])
    (root / "classes" / "cat").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "classes" / "cat" / "0.png")
    from toklip.tokenize.cli import tokenize_command

    res = CliRunner().invoke(tokenize_command, [str(root / "captioned"), str(root / "tokens"), "--model", "toklip-test",
                                                "--quiet"])
    assert res.exit_code == 0, res.output
    make_tiny_t5_encoder(root / "t5", CAPTIONS)
    return root


def config(data, out, *, steps=4, path=None, **task):
    """The c2i tests' run config, for gpt-test-t2i with the tiny T5."""
    task = {"generator": "gpt-test-t2i", "caption_encoder": str(data / "t5"), **task}
    return c2i_config(data, out, steps=steps, path=path, **task)


def test_trains_on_tokenized_captions_and_the_run_generates_from_prompts(data, tmp_path):
    result = train(config(data, tmp_path / "run"), echo=lambda s: None)
    losses = [r["ce"] for r in result.history]
    assert len(losses) == 4 and all(np.isfinite(losses))
    state = load_file(str(result.checkpoint / "model.safetensors"))
    assert not any(k.startswith(("encoder.", "shared.")) for k in state)  # the T5 is not in the checkpoint
    gen = toklip.load_generator(tmp_path / "run")  # tokenizer and caption encoder re-attached from the record
    assert gen.model_type == "t2i" and gen.toklip_meta["caption_encoder"]["source"] == str((data / "t5").resolve())
    torch.testing.assert_close(gen.state_dict()["cls_embedding.cap_proj.fc1.weight"],
                               state["cls_embedding.cap_proj.fc1.weight"])
    images = gen.generate(prompts=["a red fox in the snow", "a cat on a mat"], cfg=2.0, seed=0)
    assert images.shape == (2, 3, 64, 64)


def test_the_caption_projection_trains_and_the_uncond_caption_is_a_fixed_buffer(data, tmp_path):
    cfg = config(data, tmp_path / "run", class_dropout=0.0)
    # no weight decay and no dropped captions: fc1's weight moves only if real caption features reach the loss
    # (its gradient is the outer product with its input: zero for ignored or zeroed captions)
    cfg["optim"]["weight_decay"] = 0.0
    train(cfg, echo=lambda s: None)
    early, late = (load_file(str(tmp_path / "run" / "checkpoints" / f"step_0000000{k}" / "model.safetensors"))
                   for k in (2, 4))
    assert not torch.equal(early["cls_embedding.cap_proj.fc1.weight"], late["cls_embedding.cap_proj.fc1.weight"])
    # LlamaGen's unconditional caption: what dropped captions become; saved, never trained
    assert torch.equal(early["cls_embedding.uncond_embedding"], late["cls_embedding.uncond_embedding"])


def test_resume_is_exact(data, tmp_path):
    whole, resumed = check_resume_is_exact(lambda out, **kw: config(data, out, **kw), tmp_path)
    assert [r["ce"] for r in whole.history][2:] == [r["ce"] for r in resumed.history][-2:]


def test_trains_from_captioned_images_directly(data, tmp_path):
    result = train(config(data, tmp_path / "img", steps=2, fusion=None, path=data / "captioned"), echo=lambda s: None)
    assert len(result.history) == 2
    assert toklip.load_generator(tmp_path / "img").image_inputs is None


def test_the_example_config_trains(data, tmp_path):
    overrides = [f"data.path={data / 'tokens'}", f"task.caption_encoder={data / 't5'}", "train.steps=2",
                 f"train.out_dir={tmp_path / 'ex'}", "train.progress=false"]
    result = train("examples/gen-t2i-test.yaml", overrides, echo=lambda s: None)
    assert len(result.history) == 2 and toklip.load_generator(tmp_path / "ex").model_type == "t2i"


def test_bad_t2i_options_and_data_are_clear(data, tmp_path):
    with pytest.raises(ConfigError, match="task.caption_encoder: gpt-test-t2i is text-conditional"):
        TrainConfig.from_dict({"task": {"name": "gen", "generator": "gpt-test-t2i"}, "train": {"steps": 1}})
    with pytest.raises(ConfigError, match="num_classes is for class-conditional"):
        TrainConfig.from_dict({"task": {"name": "gen", "generator": "gpt-test-t2i", "caption_encoder": "x",
                                        "num_classes": 3}, "train": {"steps": 1}})
    with pytest.raises(ConfigError, match="has no captions"):
        train(config(data, tmp_path / "c", path=data / "classes"), echo=lambda s: None)
    with pytest.raises(ConfigError, match="class-conditional"):
        train(config(data, tmp_path / "d", generator="gpt-test"), echo=lambda s: None)
