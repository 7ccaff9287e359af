"""The ``gen`` training task through the shared trainer: tokenized data or images, checkpoints that
``load_generator`` reads, exact resume, ``toklip generate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

import toklip
from toklip import ConfigError
from toklip.train.config import TrainConfig
from toklip.train.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-data")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "images" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / c / f"{i}.png")
    from toklip.tokenize.cli import tokenize_command

    res = CliRunner().invoke(tokenize_command, [str(root / "images"), str(root / "tokens"), "--model", "toklip-test",
                                                "--augment", "flip", "--quiet"])
    assert res.exit_code == 0, res.output
    return root


def config(data, out, *, steps=4, fusion="concat", path=None, **task):
    return {
        "task": {"name": "gen", "generator": "gpt-test", "tokenizer": "toklip-test", "fusion": fusion, **task},
        "data": {"path": str(path or data / "tokens"), "batch_size": 4, "workers": 0},
        "optim": {"lr": 1e-3, "weight_decay": 0.05, "warmup": 0, "schedule": "const", "grad_clip": 1.0},
        "train": {"steps": steps, "out_dir": str(out), "ckpt_every": 2, "progress": False, "seed": 0},
    }


def test_trains_from_tokens_and_the_checkpoint_is_a_generator(data, tmp_path):
    result = train(config(data, tmp_path / "run"), echo=lambda s: None)
    losses = [r["ce"] for r in result.history]
    assert len(losses) == 4 and all(np.isfinite(losses))
    gen = toklip.load_generator(tmp_path / "run")  # the run folder: its newest checkpoint, tokenizer recorded
    assert gen.config.num_classes == 2 and gen.image_inputs.fusion_name == "concat"
    state = load_file(str(result.checkpoint / "model.safetensors"))
    torch.testing.assert_close(gen.state_dict()["output.weight"], state["output.weight"])
    assert gen.generate(labels=[0, 1], seed=0).shape == (2, 3, 64, 64)


def check_resume_is_exact(make_config, tmp_path):
    """A run stopped after 2 of 4 steps and resumed ends with the uninterrupted run's weights and losses."""
    whole = train(make_config(tmp_path / "a"), echo=lambda s: None)
    train(make_config(tmp_path / "b", steps=2), echo=lambda s: None)
    resumed = train(make_config(tmp_path / "b"), resume="latest", echo=lambda s: None)
    a = load_file(str(whole.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return whole, resumed


def test_resume_is_exact(data, tmp_path):
    check_resume_is_exact(lambda out, **kw: config(data, out, **kw), tmp_path)


def test_trains_from_class_folders_with_codes_on_the_fly(data, tmp_path):
    result = train(config(data, tmp_path / "img", steps=2, fusion=None, path=data / "images"), echo=lambda s: None)
    assert len(result.history) == 2
    assert toklip.load_generator(tmp_path / "img").image_inputs is None


def test_bad_task_options_are_clear():
    with pytest.raises(ConfigError, match="did you mean 'fusion'"):
        TrainConfig.from_dict({"task": {"name": "gen", "fuson": "concat"}, "train": {"steps": 1}})
    with pytest.raises(ConfigError, match="task.tokenizer"):
        TrainConfig.from_dict({"task": {"name": "gen", "fusion": "concat"}, "train": {"steps": 1}})
    with pytest.raises(ConfigError, match="task.name must be one of"):
        TrainConfig.from_dict({"task": {"name": "gan"}, "train": {"steps": 1}})


def test_generate_command_writes_the_grid_and_each_image(data, tmp_path, capsys):
    train(config(data, tmp_path / "run", steps=2), echo=lambda s: None)
    from toklip.cli import cli

    res = CliRunner().invoke(cli, ["generate", str(tmp_path / "run"), "--class", "0", "--class", "1", "--n", "2",
                                                "--cfg", "2", "--seed", "3", "-o", str(tmp_path / "s.png"),
                                                "--each", str(tmp_path / "each")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])  # stderr may hold warnings
    assert report["images"] == 4 and Image.open(tmp_path / "s.png").size == (2 * 64, 2 * 64)
    assert sorted(p.name for p in (tmp_path / "each").iterdir())[0] == "00000_class0.png"
    from toklip.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["generate", str(tmp_path / "run"), "--class", "5"])
    assert e.value.code != 0 and "class labels must be in" in capsys.readouterr().err


def test_eval_fid_in_the_toklip_space_offline(data, tmp_path, capsys):
    from toklip.cli import main

    train(config(data, tmp_path / "run", steps=2), echo=lambda s: None)
    capsys.readouterr()
    main(["eval", "fid", str(tmp_path / "run"), "--reference", str(data / "images" / "cat"), "--n", "4",
          "--space", "toklip", "--batch-size", "2", "--out", str(tmp_path / "fid.json")])
    res = json.loads((tmp_path / "fid.json").read_text())
    assert res["n"] == 4 and res["fid"] > 0 and res["space"] == "toklip" and res["sampling"]["classes"] == 2
    with pytest.raises(SystemExit):
        main(["eval", "fid", str(tmp_path / "run"), "--reference", str(data / "images" / "cat"), "--n", "4"])
    assert "--inception-weights" in capsys.readouterr().err
