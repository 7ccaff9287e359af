"""The ``vlm`` task on the real trainer: `toklip train CONFIG` runs, a resumed run repeats the uninterrupted one
exactly, checkpoints are VLM folders, and the task section is checked strictly."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import toklip
from toklip.train.config import TrainConfig
from toklip.train.trainer import Trainer

from .conftest import write_llava


class Interrupt(Exception):
    pass


def _stop_after(step: int):
    def echo(msg: str) -> None:
        if msg.startswith(f"checkpoint saved step={step} "):
            raise Interrupt(msg)
    return echo


def _config(data, llm_dir, out, **task) -> dict:
    return {
        "task": {"name": "vlm", "tokenizer": "toklip-test", "llm": str(llm_dir), "max_length": 128, **task},
        "data": {"path": str(data), "batch_size": 2, "workers": 0},
        "optim": {"lr": 2e-3, "warmup": 0, "schedule": "const", "weight_decay": 0.0},
        "train": {"steps": 6, "ckpt_every": 3, "seed": 0, "device": "cpu", "progress": False, "out_dir": str(out),
                  "log_every": 1},
    }


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_llava(tmp_path_factory.mktemp("llava"), 10, missing=(3,), text_only=(5,))


def test_toklip_train_runs_stage_2_lora_and_resumes_exactly(data, llm_dir, tmp_path):
    from toklip.cli import cli

    ref_out = tmp_path / "ref"
    cfg_file = tmp_path / "vlm.yaml"
    cfg_file.write_text(yaml.safe_dump(_config(data, llm_dir, ref_out, stage=2, lora={"r": 4, "dropout": 0.0})))
    run = CliRunner().invoke(cli, ["train", str(cfg_file)], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "stage 2 (projector + LoRA)" in run.output and "done: 6 steps" in run.output
    reference = _losses(ref_out)
    assert len(reference) == 6 and all(math.isfinite(v) for v in reference)

    out = tmp_path / "resumed"
    cfg = TrainConfig.from_dict(_config(data, llm_dir, out, stage=2, lora={"r": 4, "dropout": 0.0}))
    with pytest.raises(Interrupt):
        Trainer(cfg, echo=_stop_after(3)).fit()
    assert len(_losses(out)) == 3
    result = Trainer(cfg, echo=lambda m: None).fit(resume="latest")
    assert [h["step"] for h in result.history] == [4, 5, 6]
    assert _losses(out) == reference  # bit for bit: same batches, same RNG, same optimizer state
    assert result.skipped_samples >= 1  # record 3 names a missing image: skipped, counted, not fatal
    # checkpoints hold what trains (projector + LoRA), not the frozen TokLIP or base LLM: resume rebuilt those
    trained = {n.removeprefix("module.") for n, p in result.model.named_parameters() if p.requires_grad}
    for step in (3, 6):
        saved = set(load_file(out / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))
        assert saved == trained, sorted(saved ^ trained)[:5]

    from toklip.vlm.saving import load_vlm

    a, b = load_vlm(ref_out), load_vlm(out)  # a run folder -> its newest checkpoint, a VLM folder
    assert a.config.lora and a.config.saved == ["projector", "lora"]
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    assert any(".lora_B" in n and p.abs().sum() > 0 for n, p in a.named_parameters())  # B starts at 0: it trained


def test_resume_refuses_a_checkpoint_that_lacks_a_trained_tensor(data, llm_dir, tmp_path):
    out = tmp_path / "run"
    cfg = _config(data, llm_dir, out, stage=1)
    cfg["train"].update(steps=2, ckpt_every=1)
    Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit()
    newest = out / "checkpoints" / "step_00000002" / "model.safetensors"
    tensors = load_file(newest)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, newest)
    cfg["train"]["steps"] = 3
    with pytest.raises(toklip.CheckpointError, match="lacks 1 trained tensor"):
        Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit(resume="latest")


def test_the_task_trains_from_webdataset_shards(data, llm_dir, tmp_path):
    from .test_data import _shards

    _shards(data, tmp_path / "wds", per_shard=5)
    cfg = _config(data, llm_dir, tmp_path / "run", stage=1)
    cfg["data"]["path"] = str(tmp_path / "wds")
    cfg["train"].update(steps=2, ckpt_every=2)
    result = Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit()
    assert [h["step"] for h in result.history] == [1, 2] and all(math.isfinite(h["loss"]) for h in result.history)


def test_stage_1_trains_the_projector_and_its_checkpoint_chats(data, llm_dir, tmp_path):
    out = tmp_path / "s1"
    cfg = _config(data, llm_dir, out, stage=1)
    cfg["train"].update(steps=2, ckpt_every=2)
    result = Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit()
    model = result.model
    assert model.config.template == "plain" and not model.config.llm_trained
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("projector.")}
    from toklip.vlm.saving import load_vlm

    loaded = load_vlm(out)
    assert loaded.config.saved == ["projector"]
    for name, p in loaded.projector.state_dict().items():
        assert torch.equal(p, model.projector.state_dict()[name]), name
    assert isinstance(loaded.chat(data.parent / "img" / "000.png", "what digit is this ?", max_new_tokens=3), str)


@pytest.mark.parametrize("task,match", [
    ({"stge": 2}, "did you mean 'stage'"),
    ({"stage": 3}, "task.stage must be 1"),
    ({"lora": {"r": 8}}, "stage-2 option"),
    ({"stage": 2, "lora": {"r": 8, "alpah": 16}}, "did you mean 'alpha'"),
    ({"features": "pixels"}, "task.features must be one of"),
    ({"init": "somewhere", "llm": "x"}, "drop them"),
    ({"max_length": 0}, "max_length must be a positive integer"),
])
def test_the_task_section_is_checked_strictly(data, llm_dir, tmp_path, task, match):
    cfg = _config(data, llm_dir, tmp_path, **task)
    with pytest.raises(toklip.ConfigError, match=match):
        TrainConfig.from_dict(cfg)


def test_wrong_data_and_model_sections_fail_before_building(data, llm_dir, tmp_path):
    cfg = _config(tmp_path / "missing.json", llm_dir, tmp_path)
    with pytest.raises(toklip.ConfigError, match="missing.json.*does not exist"):
        Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit()
    cfg = _config(data, llm_dir, tmp_path)
    cfg["model"] = {"preset": "toklip-test"}
    with pytest.raises(toklip.ConfigError, match="model.preset does not apply"):
        Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit()
    cfg = _config(data, llm_dir, tmp_path)
    cfg["dist"] = {"strategy": "fsdp"}  # FSDP works (tests/vlm/test_fsdp.py), under torchrun
    with pytest.raises(toklip.ConfigError, match="launch with torchrun"):
        Trainer(TrainConfig.from_dict(cfg), echo=lambda m: None).fit()


@pytest.mark.parametrize("name,lr,batch", [("vlm-stage1.yaml", 1e-3, 32), ("vlm-stage2.yaml", 2e-5, 16)])
def test_the_example_configs_are_llava_1_5s_recipe(name, lr, batch):
    from pathlib import Path

    cfg = TrainConfig.load(Path(__file__).resolve().parents[2] / "examples" / name)
    assert cfg.task["name"] == "vlm" and cfg.optim.lr == lr and cfg.data.batch_size == batch
    assert cfg.optim.weight_decay == 0.0 and cfg.train.epochs == 1 and cfg.optim.schedule == "cosine"
    lora = TrainConfig.load(Path(__file__).resolve().parents[2] / "examples" / "vlm-stage2.yaml",
                            ["task.lora={r: 128, alpha: 256}", "optim.lr=2e-4"])
    assert lora.task["lora"] == {"r": 128, "alpha": 256}
