"""The `toklip` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from toklip.cli import cli


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_list_shows_every_builtin_with_status(run):
    out = run("list")
    assert out.exit_code == 0
    for name in ("llamagen", "siglip2-so400m-16-256", "mlp", "causal", "sdpa", "concat", "toklip-l-384"):
        assert name in out.output
    assert "missing: flash-attn>=2.6" in out.output
    assert "toklip 0.1.0 (builtin)" in out.output


def test_list_kind_pattern_json(run):
    out = run("list", "encoder", "siglip2-so400m*", "--json")
    items = json.loads(out.output)
    assert [i["name"] for i in items] == ["siglip2-so400m-16-256", "siglip2-so400m-16-384", "siglip2-so400m-16-512"]
    assert items[0]["aliases"] == ["siglip2", "siglip2-so400m-16", "siglip2-so400m"]
    assert items[0]["pretrained"] == ["webli"] and items[0]["status"] == "ok"


def test_list_unknown_kind(run):
    out = CliRunner().invoke(cli, ["list", "tokenizers"])
    assert out.exit_code != 0 and "unknown kind 'tokenizers'" in out.output


def test_plugins(run):
    assert "no plugins installed" in run("plugins").output
    records = json.loads(run("plugins", "--all", "--json").output)
    assert records[0]["status"] == "builtin" and "register_vq_tokenizers" in records[0]["hooks"]


def test_doctor(run):
    out = run("doctor")
    assert out.exit_code == 0
    assert "torch" in out.output and "sdpa" in out.output and "usable" in out.output
    assert "flash_attn  missing: flash-attn" in out.output


def test_convert_and_errors(tmp_path, fixtures_dir, capsys):
    from toklip.cli import main

    d = fixtures_dir / "official-toklip"
    main(["convert", str(d / "official_state.pt"), str(tmp_path / "out"), "--config", str(d / "config.json")])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "toklip.from_pretrained" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["convert", str(d / "official_state.pt"), str(tmp_path / "out2")])
    assert e.value.code == 2
    assert "matches no released TokLIP" in capsys.readouterr().err


def test_demo_writes_pngs(run, tmp_path):
    out = run("demo", "--out", str(tmp_path))
    assert out.exit_code == 0, out.output
    assert "indices  [1, 64] torch.int64 on a 8x8 grid" in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_input.png", "demo_reconstruction.png",
                                                          "demo_tokens.png"]


def test_help_lists_lazy_commands(run):
    out = run("--help")
    for name in ("list", "plugins", "doctor", "convert", "demo", "quickstart", "serve"):
        assert name in out.output


def test_real_entry_point_discovery_in_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "toklip", "list", "vq", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "llamagen" in [i["name"] for i in json.loads(out.stdout)]
