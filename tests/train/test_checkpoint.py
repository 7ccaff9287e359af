"""Training checkpoints: layout, `latest`, pruning, killed writers, malformed folders, and no pickle on resume."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("webdataset", reason="training needs the train extra: pip install 'toklip[train]'")

import toklip  # noqa: E402
from toklip.core.errors import CheckpointError  # noqa: E402
from toklip.train import checkpoint as ckpt  # noqa: E402
from toklip.train.trainer import Trainer  # noqa: E402

from .conftest import REFERENCE_STEPS, base_overrides, load_config, read_metrics  # noqa: E402


def copy_run(reference, dest: Path, steps=(8,)) -> Path:
    """A private copy of the reference run's output with only the given checkpoints."""
    out = dest / "run"
    root = out / "checkpoints"
    root.mkdir(parents=True)
    for s in steps:
        shutil.copytree(reference["out"] / "checkpoints" / ckpt.step_dir_name(s), root / ckpt.step_dir_name(s))
    (root / "latest").write_text(ckpt.step_dir_name(max(steps)) + "\n")
    shutil.copy(reference["out"] / "metrics.jsonl", out / "metrics.jsonl")
    return out


def test_checkpoint_folder_layout(reference):
    out = reference["out"]
    root = out / "checkpoints"
    # every 2 steps, the newest 2 kept, nothing half-written left behind
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006", "step_00000008"]
    assert (root / "latest").read_text().strip() == "step_00000008"
    last = root / "step_00000008"
    assert sorted(p.name for p in last.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "train_state.json"]
    assert ckpt.find_checkpoint(out, "latest") == last

    # a save_pretrained folder: toklip.from_pretrained gives back the trained weights
    loaded = toklip.from_pretrained(last)
    expected = reference["state"]
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.image_size == 32

    # optimizer moments by parameter name, for exactly the trainable parameters
    from safetensors.torch import load_file

    optim = load_file(str(last / "optimizer.safetensors"))
    trainable = {n for n, p in reference["result"].model.named_parameters() if p.requires_grad}
    assert {k.rsplit("::", 1)[0] for k in optim} == {"model." + n for n in trainable}
    assert {k.rsplit("::", 1)[1] for k in optim} == {"exp_avg", "exp_avg_sq", "step"}

    state = json.loads((last / "train_state.json").read_text())
    assert state["step"] == REFERENCE_STEPS and state["world_size"] == 1 and state["data_workers"] == 0
    position = state["data"]["0"]["0"]
    assert position["epoch"] == 1 and position["seen"] == 2 * 16
    assert set(state["rng"]["0"]) >= {"python", "numpy", "torch"}
    assert state["config"] == load_config(reference["overrides"]).to_dict()

    # one metrics line per step, the unreadable-sample count in it
    metrics = reference["metrics"]
    assert [m["step"] for m in metrics] == list(range(1, REFERENCE_STEPS + 1))
    skipped = [m["skipped"] for m in metrics]  # 2 unreadable files per epoch, counted as they are read
    assert skipped == sorted(skipped) and skipped[3] <= 2 and 2 <= skipped[-1] <= 4
    assert reference["result"].skipped_samples == skipped[-1] == position["skipped"]
    assert (out / "config.resolved.yaml").is_file()
    assert not torch.are_deterministic_algorithms_enabled()  # train.deterministic ends with the run


def test_stale_tmp_folders_are_ignored_and_pruning_keeps_the_newest(reference, tmp_path):
    out = copy_run(reference, tmp_path, steps=(6, 8))
    root = out / "checkpoints"
    killed = root / ".step_00000010.k1ll3d.tmp"  # a writer killed before its rename
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 100)
    old = root / ".step_00000002.old"  # a pruner killed before its rmtree
    old.mkdir()
    assert ckpt.find_checkpoint(out, "latest") == root / "step_00000008"
    assert ckpt.complete_checkpoints(root) == [root / "step_00000006", root / "step_00000008"]
    ckpt.prune(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000008"]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (6, 8, 5):  # resumed from an older step 4: step 5 is written after 6 and 8 exist
        (root / ckpt.step_dir_name(step)).mkdir(parents=True)
        (root / ckpt.step_dir_name(step) / "train_state.json").write_text("{}")
    ckpt.prune(root, keep_last=2, keep=root / "step_00000005")
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005", "step_00000008"]


def test_latest_falls_back_when_its_folder_is_gone(reference, tmp_path):
    out = copy_run(reference, tmp_path, steps=(6,))
    (out / "checkpoints" / "latest").write_text("step_00000008\n")  # killed between pruning and pointing
    assert ckpt.find_checkpoint(out, "latest") == out / "checkpoints" / "step_00000006"
    assert ckpt.find_checkpoint(tmp_path / "empty", "latest") is None


def _truncate(path: Path, keep: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _edit_state(path: Path, fn) -> None:
    state = json.loads(path.read_text())
    fn(state)
    path.write_text(json.dumps(state))


MALFORMED = {
    "truncated_model": (lambda d: _truncate(d / "model.safetensors"), r"model weights .* unreadable"),
    "truncated_optimizer": (lambda d: _truncate(d / "optimizer.safetensors"), r"optimizer state .* unreadable"),
    "missing_model": (lambda d: (d / "model.safetensors").unlink(), r"model weights .* missing"),
    "missing_state": (lambda d: (d / "train_state.json").unlink(), r"train_state.json is missing"),
    "torn_state": (lambda d: _truncate(d / "train_state.json", 50), r"train_state.json is unreadable"),
    "state_without_optimizer": (lambda d: _edit_state(d / "train_state.json", lambda s: s.pop("optimizer")),
                                r"lacks optimizer"),
}


@pytest.mark.parametrize("how", ["latest", "folder"])
@pytest.mark.parametrize("damage", sorted(MALFORMED))
def test_malformed_checkpoints_are_clear_checkpoint_errors(reference, tmp_path, damage, how):
    out = copy_run(reference, tmp_path, steps=(6, 8))
    folder = out / "checkpoints" / "step_00000008"
    spoil, message = MALFORMED[damage]
    spoil(folder)
    with pytest.raises(CheckpointError, match=message):  # never a silent restart from step 6 or 0
        path = ckpt.find_checkpoint(out, "latest" if how == "latest" else str(folder))
        ckpt.read_checkpoint_dir(path)


def test_resume_from_a_checkpoint_of_another_model_shape(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    cfg = load_config(base_overrides(reference["data"], out, **{
        "model.projector": "{name: mlp, hidden: 128}", "train.steps": 10}))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        Trainer(cfg, echo=lambda m: None).fit(resume="latest")


def test_resume_never_unpickles_and_cleans_a_killed_writers_folder(reference, tmp_path, monkeypatch):
    out = copy_run(reference, tmp_path, steps=(6, 8))
    root = out / "checkpoints"
    killed = root / ".step_00000009.k1ll3d.tmp"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"junk")

    def refuse(*args, **kwargs):
        raise AssertionError("a training checkpoint must not be unpickled")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(target, name, refuse)
    messages = []
    result = Trainer(load_config(base_overrides(reference["data"], out, **{"train.steps": 10, "train.ckpt_every": 2})),
                     echo=messages.append).fit(resume="latest")
    monkeypatch.undo()
    assert result.step == 10 and [h["step"] for h in result.history] == [9, 10]
    assert any("resumed from" in m and "step_00000008" in m for m in messages)
    assert not killed.exists()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000008", "step_00000010"]
    assert [m["step"] for m in read_metrics(out)] == list(range(1, 11))


def test_resume_latest_without_a_checkpoint_starts_at_step_0(folder_data, tmp_path):
    out = tmp_path / "fresh"
    messages = []
    cfg = load_config(base_overrides(folder_data, out, **{"train.steps": 1}))
    result = Trainer(cfg, echo=messages.append).fit(resume="latest")
    assert result.step == 1 and [h["step"] for h in result.history] == [1]
    assert any("no checkpoint" in m and "starting from step 0" in m for m in messages)
    assert (out / "checkpoints" / "step_00000001" / "train_state.json").is_file()


def test_a_resume_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        ckpt.find_checkpoint(tmp_path, str(tmp_path / "nowhere"))


def test_resume_with_another_number_of_loader_workers_restarts_the_epoch_for_every_worker(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    cfg = load_config(base_overrides(reference["data"], out, **{
        "data.workers": 2, "train.steps": 10, "train.ckpt_every": 2}))
    restarts = r"x 0 loader worker\(s\): the data stream restarts at the beginning of epoch 1"
    with pytest.warns(UserWarning, match=restarts):
        result = Trainer(cfg, echo=lambda m: None).fit(resume="latest")
    assert result.step == 10
    state = json.loads((out / "checkpoints" / "step_00000010" / "train_state.json").read_text())
    assert state["data_workers"] == 2
    positions = state["data"]["0"]
    assert sorted(positions) == ["0", "1"]  # one batch from each worker...
    assert [positions[w]["epoch"] for w in ("0", "1")] == [1, 1]  # ...both from epoch 1, not from the start


def test_a_fresh_run_refuses_a_folder_with_an_earlier_runs_checkpoints(reference, tmp_path):
    """Its higher step_* names would outrank the new run's checkpoints (pruning, resume): continue or move."""
    from toklip.core.errors import ConfigError
    from toklip.train.trainer import Trainer

    from .conftest import base_overrides, isolated, load_config

    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    with isolated(), pytest.raises(ConfigError, match="--resume latest.*new train.out_dir"):
        Trainer(load_config(base_overrides(reference["data"], out)), echo=lambda m: None).fit()
