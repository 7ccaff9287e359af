"""`toklip eval zeroshot|retrieval`: JSON results with the right keys, lazy wiring, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from toklip.cli import cli, main

from .conftest import COLORS, corrupt, png

ZEROSHOT_KEYS = {"task", "data", "classes", "templates", "images", "evaluated", "skipped", "top1", "top5", "seconds",
                 "model"}
RETRIEVAL_KEYS = {"task", "data", "images", "evaluated_images", "skipped", "captions", "seconds", "model",
                  "image_to_text_mean", "text_to_image_mean", "mean",
                  *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))}


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "imagenet-val"
    for name in ("red", "green", "blue"):
        png(root / f"{name}_thing" / "0.png", COLORS[name])
    corrupt(root / "red_thing" / "1.jpg")
    return root


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_eval_is_wired_lazily():
    from toklip.cli.builtin import LAZY_COMMANDS

    assert LAZY_COMMANDS["eval"][0] == "toklip.eval.cli:eval_command"
    code = ("import sys; from toklip.cli import cli; cli.main(['--help'], standalone_mode=False); "
            "print('LOADED' if 'toklip.eval.cli' in sys.modules or 'torch' in sys.modules else 'LAZY')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "eval" in out and "Evaluate: zero-shot, retrieval" in out
    assert out.strip().endswith("LAZY")
    help_out = invoke("eval", "--help").output
    assert "zeroshot" in help_out and "retrieval" in help_out


def test_zeroshot_cli(tiny, small_folder, tmp_path):
    _, model_dir = tiny
    out = tmp_path / "res.json"
    with pytest.warns(UserWarning, match="skipping .*1.jpg"):
        r = invoke("eval", "zeroshot", str(small_folder), "--model", str(model_dir), "--template", "a photo of {}.",
                   "--out", str(out), "--quiet", "--workers", "0")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    saved = json.loads(out.read_text())
    assert set(saved) == ZEROSHOT_KEYS and printed == saved
    assert saved["classes"] == 3 and saved["templates"] == 1 and saved["model"] == str(model_dir)
    assert saved["images"] == 4 and saved["evaluated"] == 3 and saved["skipped"] == 1


def test_retrieval_cli(tiny, coco_folder, tmp_path):
    _, model_dir = tiny
    captions, root = coco_folder
    with pytest.warns(UserWarning, match="skipping .*001_green.png"):
        r = invoke("eval", "retrieval", str(captions), "--model", str(model_dir), "--quiet", "--workers", "0",
                   "--images", str(root), "--batch-size", "4")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert set(res) == RETRIEVAL_KEYS
    assert res["evaluated_images"] == 3 and res["captions"] == 9


def one_line_error(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "rror" in ln]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_bad_paths_give_one_line_errors(tiny, small_folder, tmp_path, capsys):
    _, model_dir = tiny
    missing = str(tmp_path / "missing")
    one_line_error(capsys, ["eval", "zeroshot", missing, "--model", str(model_dir)], "does not exist")
    one_line_error(capsys, ["eval", "retrieval", missing + ".json", "--model", str(model_dir)], "does not exist")
    one_line_error(capsys, ["eval", "zeroshot", str(small_folder), "--model", missing],
                   "does not exist")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    one_line_error(capsys, ["eval", "zeroshot", str(small_folder), "--model", str(empty)], "has no config.json")
    bad = tmp_path / "captions.json"
    bad.write_text("{not json")
    one_line_error(capsys, ["eval", "retrieval", str(bad), "--model", str(model_dir)], "is not valid JSON")
    one_line_error(capsys, ["eval", "zeroshot", str(small_folder), "--model", str(model_dir), "--template",
                            str(tmp_path / "templates.txt")], "templates file")
    flat = tmp_path / "flat"
    flat.mkdir()
    one_line_error(capsys, ["eval", "zeroshot", str(flat), "--model", str(model_dir)], "no class sub-folders")


def test_load_model_from_a_training_run_folder(tiny, tmp_path):
    from toklip.core.errors import ConfigError, TokLIPError
    from toklip.eval.common import load_model

    model, _ = tiny
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no finished checkpoint"):
        load_model(str(run), device="cpu")
    step = run / "checkpoints" / "step_00000005"
    model.save_pretrained(step)
    with pytest.raises(TokLIPError, match="train_state.json"):  # not finished (or damaged): never loaded
        load_model(str(run), device="cpu")
    (step / "train_state.json").write_text("{}")
    loaded = load_model(str(run), device="cpu")
    assert not loaded.training
    sd, ref = loaded.state_dict(), model.state_dict()
    assert all((sd[k] == ref[k]).all() for k in ref)
