"""The command line: ``toklip tokenize IMAGES OUT``, ``verify`` (and its refusal of another VQ), ``stats``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from toklip.cli.main import cli

from .conftest import make_class_folders

pytest.importorskip("webdataset", reason="the readers need the train extra: pip install 'toklip[train]'")
ARGS = ["--vq", "llamagen-test", "--image-size", "32", "--workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture
def tokenized(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["tokenize", str(src), str(out), *ARGS, "--augment", "flip", "--shard-size", "4"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_tokenize_prints_a_summary_and_records_the_command(tokenized):
    out, output = tokenized
    assert "2 shard(s) written" in output and "6 images (0 skipped)" in output
    assert "6 images x 2 views x 16 tokens, uint16" in output
    m = json.loads((out / "manifest.json").read_text())
    assert "--augment flip" in m["command"] and m["tokenizer"]["weights"] is None


def test_verify_decodes_a_grid_and_reproduces_the_indices(tokenized):
    out, _ = tokenized
    res = CliRunner().invoke(cli, ["tokenize", "verify", str(out), "--n", "3", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["samples"] == 3 and r["reencoded_index_match"] == 1.0
    from PIL import Image

    assert Image.open(r["grid"]).size == (6 * 32, 32)  # three (original | reconstruction) pairs in one row


def test_verify_refuses_a_vq_with_other_weights(tokenized):
    out, _ = tokenized
    res = CliRunner().invoke(cli, ["tokenize", "verify", str(out), "--vq", "llamagen-test", "--seed", "1",
                                   "--device", "cpu"])
    assert res.exit_code != 0
    assert "tokens were made with" in str(res.exception) and "t2i vs c2i" in str(res.exception)


def test_stats_reports_usage_and_writes_the_histogram(tokenized):
    out, _ = tokenized
    res = CliRunner().invoke(cli, ["tokenize", "stats", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["tokens"] == 6 * 2 * 16 and r["vocab_size"] == 1024 and 0 < r["used"] <= 192
    assert r["perplexity"] <= r["used"] and (out / "code_usage.png").stat().st_size > 0


def test_bad_arguments_say_what_to_do(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=1)
    runner = CliRunner()
    res = runner.invoke(cli, ["tokenize", str(src), str(tmp_path / "o"), "--image-size", "32"])
    assert "exactly one of --vq NAME" in str(res.exception)
    res = runner.invoke(cli, ["tokenize", str(src), str(tmp_path / "o"), "--vq", "llamagen", "--image-size", "32"])
    assert "--vq-weights" in str(res.exception) and "c2i" in str(res.exception)
    res = runner.invoke(cli, ["tokenize", str(src), str(tmp_path / "o2"), *ARGS, "--resume"])
    assert "nothing to resume" in str(res.exception)
