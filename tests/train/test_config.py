"""The training config: YAML/JSON files, section.key=value overrides, validation and the resolved form."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from toklip.cli import cli
from toklip.core.errors import ConfigError
from toklip.train.config import TrainConfig, apply_override, parse_value

STEPS = ["train.steps=5"]


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig.load(None, STEPS)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.eps == 1e-6 and cfg.optim.weight_decay == 0.1
    assert cfg.optim.schedule == "cosine" and cfg.optim.grad_clip is None
    assert cfg.loss.contrastive == "clip" and cfg.loss.distill_weight == 1000.0
    assert cfg.model.lock_text is True and cfg.train.precision == "fp32"


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  preset: toklip-test\n"
        "optim:\n  lr: 1e-4\n  eps: 1e-8\n  betas: [0.8, 0.9]\n"  # YAML 1.1 would read 1e-4 as a string
        "train:\n  steps: 100\n  precision: bf16\n"
        "loss:\n  distill_weight: 5e2\n"
    )
    cfg = TrainConfig.load(path, ["optim.lr=3e-5", "train.steps=7", "data.shuffle=false",
                                  "model.encoder={name: siglip2-test, pretrained: /x/y.bin}",
                                  "model.vq=llamagen-test", "data.path=[a.tar, b.tar]", "optim.grad_clip=1.0"])
    assert cfg.model.preset == "toklip-test"
    assert cfg.optim.lr == 3e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.eps == 1e-8 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.loss.distill_weight == 500.0
    assert cfg.train.steps == 7 and cfg.train.precision == "bf16"
    assert cfg.data.shuffle is False
    assert cfg.model.encoder == {"name": "siglip2-test", "pretrained": "/x/y.bin"}
    assert cfg.model.vq == "llamagen-test"
    assert cfg.data.path == ["a.tar", "b.tar"]
    assert cfg.optim.grad_clip == 1.0


def test_json_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"optim": {"lr": 2e-4, "schedule": "const"}, "train": {"epochs": 1.5}}))
    cfg = TrainConfig.load(path, ["dist.strategy=ddp"])
    assert cfg.optim.lr == 2e-4 and cfg.optim.schedule == "const"
    assert cfg.train.epochs == 1.5 and cfg.train.steps is None and cfg.dist.strategy == "ddp"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.load(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        TrainConfig.load(listy)


@pytest.mark.parametrize(
    "text,value",
    [("1e-4", 1e-4), ("-3E5", -3e5), ("1.0e-4", 1e-4), ("5", 5), ("true", True), ("false", False), ("null", None),
     ("[0.9, 0.95]", [0.9, 0.95]), ("{name: mlp, hidden: 3}", {"name": "mlp", "hidden": 3}),
     ("cosine", "cosine"), ("runs/x.y", "runs/x.y"), ("e5", "e5"), ("shards/{000..009}.tar", "shards/{000..009}.tar"),
     ("{bad", "{bad")],
)
def test_override_values(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_text_fields_stay_text(tmp_path):
    cfg = TrainConfig.load(None, [*STEPS, f"train.out_dir={tmp_path}/2024", "train.out_dir=2024"])
    assert cfg.train.out_dir == "2024"


def test_nested_override_and_override_errors():
    data: dict = {}
    apply_override(data, "model.encoder.pretrained=/w.bin")
    assert data == {"model": {"encoder": {"pretrained": "/w.bin"}}}
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "optim.lr")
    with pytest.raises(ConfigError, match="name a section and a key"):
        apply_override({}, "steps=5")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_override({"model": {"encoder": "siglip2"}}, "model.encoder.pretrained=x")


@pytest.mark.parametrize(
    "override,match",
    [
        ("optim.lrr=1e-4", r"unknown key\(s\) in section 'optim': 'lrr' \(did you mean 'lr'\?\)"),
        ("optm.lr=1e-4", r"unknown key\(s\) in config: 'optm' \(did you mean 'optim'\?\)"),
        ("train.step=5", r"did you mean 'steps'"),
    ],
)
def test_unknown_keys_suggest_the_right_one(override, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.load(None, [*STEPS, override])


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.precision=fp8", "train.precision must be one of"),
        ("train.steps=0", "train.steps must be a positive integer"),
        ("train.steps=1.5", "train.steps must be a positive integer"),
        ("train.epochs=-1", "train.epochs must be a finite number > 0"),
        ("optim.lr=-1", "optim.lr must be a finite number >= 0"),
        ("optim.lr=abc", "optim.lr must be a finite number >= 0"),
        ("optim.eps=abc", "optim.eps must be a finite number >= 0"),
        ("optim.weight_decay=-0.1", "optim.weight_decay must be a finite number >= 0"),
        ("optim.betas=0.9", "optim.betas must be two numbers"),
        ("optim.betas=[0.9, 1.0]", "optim.betas must be two numbers"),
        ("optim.schedule=linear", "optim.schedule must be"),
        ("optim.warmup=-1", "optim.warmup must be an integer >= 0"),
        ("optim.grad_clip=0", "optim.grad_clip must be a finite number > 0"),
        ("optim.grad_clip=abc", "optim.grad_clip must be a finite number > 0"),
        ("data.batch_size=0", "data.batch_size must be a positive integer"),
        ("data.type=parquet", "data.type must be one of"),
        ("data.shuffle=maybe", "data.shuffle must be true or false"),
        ("dist.strategy=deepspeed", "dist.strategy must be one of"),
        ("loss.contrastive=sigmoid", "loss.contrastive must be one of"),
        ("loss.distill_weight=-1", "loss.distill_weight must be a finite number >= 0"),
        ("model=5", "section 'model' must be a mapping"),
    ],
)
def test_bad_values_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.load(None, [*STEPS, override]) if override != "model=5" else TrainConfig.from_dict(
            {"model": 5, "train": {"steps": 5}})


def test_length_is_required():
    with pytest.raises(ConfigError, match=r"train\.steps=N or train\.epochs=E"):
        TrainConfig.load(None, [])
    assert TrainConfig.load(None, ["train.epochs=2"]).train.epochs == 2


def test_resolved_config_round_trips(tmp_path):
    cfg = TrainConfig.load(None, [*STEPS, "optim.betas=[0.8, 0.99]", "model.encoder={name: siglip2-test}",
                                  "loss.contrastive=siglip", "optim.grad_clip=2.0", "data.path=/d"])
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON types only
    assert d["optim"]["betas"] == [0.8, 0.99]
    assert TrainConfig.from_dict(d) == cfg
    for name in ("resolved.yaml", "resolved.json"):
        cfg.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == cfg


def test_print_config_via_the_cli(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-4\ntrain:\n  steps: 9\n")
    runner = CliRunner()
    out = runner.invoke(cli, ["train", str(path), "optim.warmup=3", "--set", "loss.distill_weight=10",
                              "--steps", "11", "--print-config"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    printed = yaml.safe_load(out.output)
    assert printed["optim"]["lr"] == 1e-4 and printed["optim"]["warmup"] == 3
    assert printed["loss"]["distill_weight"] == 10 and printed["train"]["steps"] == 11
    assert TrainConfig.from_dict(printed) == TrainConfig.load(path, ["optim.warmup=3", "loss.distill_weight=10",
                                                                       "train.steps=11"])
    only = runner.invoke(cli, ["train", "train.steps=4", "--print-config"], catch_exceptions=False)
    assert only.exit_code == 0 and yaml.safe_load(only.output)["train"]["steps"] == 4
    bad = runner.invoke(cli, ["train", "optim.lrr=1", "train.steps=4", "--print-config"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)
    assert "did you mean 'lr'" in str(bad.exception)


def test_cli_entry_point_reports_config_errors(capsys):
    from toklip.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "optim.lrr=1", "train.steps=4", "--print-config"])
    assert e.value.code == 2
    assert "error: unknown key(s) in section 'optim': 'lrr' (did you mean 'lr'?)" in capsys.readouterr().err
