"""Resume against damaged files (issue 11, items 14 and 15): nothing lost, nothing raw.

metrics.jsonl: a damaged line never costs the lines after it, and every line that leaves the log is kept beside it.
train_state.json / latest: every hostile value is a CheckpointError naming the file, the field and the way on,
never a traceback from numpy, torch or the data stream, and never a silent restart.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("webdataset", reason="training needs the train extra: pip install 'toklip[train]'")

from toklip.core.errors import CheckpointError, ConfigError  # noqa: E402
from toklip.train import checkpoint as ckpt  # noqa: E402
from toklip.train import metrics_log  # noqa: E402
from toklip.train.trainer import Trainer  # noqa: E402

from .conftest import base_overrides, load_config, read_metrics  # noqa: E402
from .test_checkpoint import copy_run  # noqa: E402


# ---------------------------------------------------------------------------------------------- metrics.jsonl
def records(steps) -> list[bytes]:
    return [json.dumps({"step": s, "loss": 1.0 / s}).encode() + b"\n" for s in steps]


def reopen(out: Path, step: int) -> list[str]:
    """The trainer's own metrics step on resume; -> the warnings it gave."""
    trainer = Trainer.__new__(Trainer)
    trainer.out_dir = out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer._metrics_file(step).close()
    return [str(w.message) for w in caught]


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


DAMAGED_LINES = {
    "garbage": b"{this is not json\n",
    "invalid_utf8": b'{"step": 2, "loss": "\xff\xfe"}\n',
    "not_an_object": b"[2, 0.5]\n",
    "step_as_string": b'{"step": "2", "loss": 0.5}\n',
    "step_as_bool": b'{"step": true, "loss": 0.5}\n',
    "no_step": b'{"loss": 0.5}\n',
    "huge_integer": b'{"step": ' + b"9" * 5000 + b"}\n",  # int() refuses > 4300 digits with a ValueError
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000 + b"\n",  # RecursionError in json
    "nul_bytes": b"\0" * 64 + b"\n",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_LINES))
def test_a_damaged_middle_line_keeps_every_later_line_and_the_original(tmp_path, damage):
    out = tmp_path / "run"
    out.mkdir()
    lines = records([1]) + [DAMAGED_LINES[damage]] + records(range(3, 7))
    original = b"".join(lines)
    (out / "metrics.jsonl").write_bytes(original)
    messages = reopen(out, 6)  # resumed from step 6: every readable line is a step it covers
    assert steps_in(out / "metrics.jsonl") == [1, 3, 4, 5, 6]  # was [1]: everything after line 2 deleted
    aside = out / "metrics.jsonl.damaged-1"
    assert aside.read_bytes() == original  # the damaged original, unchanged
    assert len(messages) == 1
    assert str(out / "metrics.jsonl") in messages[0] and "(2)" in messages[0] and aside.name in messages[0]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", aside.name]  # no temporary files left


def test_lines_past_the_resumed_step_move_aside_and_a_torn_tail_with_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torn = b'{"step": 7, "lo'  # killed mid-write
    (out / "metrics.jsonl").write_bytes(b"".join(records(range(1, 7))) + torn)
    messages = reopen(out, 4)
    assert steps_in(out / "metrics.jsonl") == [1, 2, 3, 4]
    superseded = out / "metrics.jsonl.superseded-1"
    assert superseded.read_bytes() == b"".join(records([5, 6])) + torn + b"\n"
    assert not (out / "metrics.jsonl.damaged-1").exists()  # a torn last line is what a kill leaves, not damage
    assert len(messages) == 1 and "lines of steps after 4 (5, 6)" in messages[0] and "line 7" in messages[0]
    assert superseded.name in messages[0]

    assert reopen(out, 4) == []  # nothing left to move: the file is not touched again
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", superseded.name]


def test_set_aside_files_are_never_replaced(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl.damaged-1").write_bytes(b"an earlier resume's copy\n")
    (out / "metrics.jsonl.superseded-1").write_bytes(b"another one\n")
    damaged = b"".join(records([1])) + b"oops\n" + b"".join(records([2, 3]))
    (out / "metrics.jsonl").write_bytes(damaged)
    reopen(out, 3)
    assert (out / "metrics.jsonl.damaged-1").read_bytes() == b"an earlier resume's copy\n"
    assert (out / "metrics.jsonl.damaged-2").read_bytes() == damaged
    (out / "metrics.jsonl").write_bytes(b"".join(records([1, 2, 3])))
    reopen(out, 1)
    assert (out / "metrics.jsonl.superseded-1").read_bytes() == b"another one\n"
    assert (out / "metrics.jsonl.superseded-2").read_bytes() == b"".join(records([2, 3]))


def test_a_run_that_starts_over_sets_the_old_log_aside(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    old = b"".join(records([1, 2]))
    (out / "metrics.jsonl").write_bytes(old)
    reopen(out, 0)  # no checkpoint to resume: the run logs step 1 again
    assert (out / "metrics.jsonl").read_bytes() == b""
    assert (out / "metrics.jsonl.superseded-1").read_bytes() == old


def test_an_overlong_line_is_read_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log, "MAX_LINE", 64)
    out = tmp_path / "run"
    out.mkdir()
    original = b"".join(records([1])) + b"x" * 1000 + b"\n" + b"".join(records([2]))
    (out / "metrics.jsonl").write_bytes(original)
    messages = reopen(out, 2)
    assert steps_in(out / "metrics.jsonl") == [1, 2] and "(2)" in messages[0]
    assert (out / "metrics.jsonl.damaged-1").read_bytes() == original


def test_a_last_record_without_its_newline_gets_one_before_the_next_append(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_bytes(b"".join(records([1])) + b"\n\n" + json.dumps({"step": 2}).encode())
    assert reopen(out, 2) == []
    assert (out / "metrics.jsonl").read_bytes() == b"".join(records([1])) + b'{"step": 2}\n'


def test_a_folder_in_place_of_metrics_jsonl_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    with pytest.raises(ConfigError, match="metrics.jsonl is not a file"):
        reopen(out, 0)


# ---------------------------------------------------------------------------------------------- latest
def make_folders(root: Path, steps) -> None:
    for s in steps:
        (root / ckpt.step_dir_name(s)).mkdir(parents=True)
        (root / ckpt.step_dir_name(s) / ckpt.STATE_NAME).write_text("{}")


POINTERS = {
    "invalid_utf8": (b"\xff\xfestep_00000004\n", "not UTF-8"),
    "huge": (b"step_00000004" + b" " * 10_000, "longer than"),
    "escapes_the_folder": (b"../../etc\n", "does not name a step_"),
    "names_a_missing_folder": (b"step_00000099\n", "not a folder there"),
}


@pytest.mark.parametrize("pointer", sorted(POINTERS))
def test_a_damaged_latest_pointer_warns_and_uses_the_newest_folder(tmp_path, pointer):
    root = tmp_path / "checkpoints"
    make_folders(root, (2, 4))
    content, message = POINTERS[pointer]
    (root / "latest").write_bytes(content)
    with pytest.warns(UserWarning, match=message) as caught:
        assert ckpt.find_checkpoint(tmp_path, "latest") == root / "step_00000004"
    assert str(root / "latest") in str(caught[0].message) and "step_00000004" in str(caught[0].message)


def test_a_latest_that_is_a_folder_warns(tmp_path):
    root = tmp_path / "checkpoints"
    make_folders(root, (2,))
    (root / "latest").mkdir()
    with pytest.warns(UserWarning, match="is not a file"):
        assert ckpt.find_checkpoint(tmp_path, "latest") == root / "step_00000002"


def test_folders_are_ordered_by_step_number_not_by_name(tmp_path):
    root = tmp_path / "checkpoints"
    make_folders(root, (99_999_999,))
    (root / "step_100000000").mkdir()  # past 8 digits the name grows
    (root / "step_100000000" / ckpt.STATE_NAME).write_text("{}")
    (root / "step_99999999.bak").mkdir()  # a user's copy is not a checkpoint of step 99999999
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["step_99999999", "step_100000000"]
    assert ckpt.find_checkpoint(tmp_path, "latest") == root / "step_100000000"


# ---------------------------------------------------------------------------------------------- train_state.json
def valid_state(step: int = 4, world_size: int = 1) -> dict:
    """A train_state.json as the trainer writes it (real RNG states; AdamW's param groups as torch 2.x writes them;
    the reference-run tests below resume real ones)."""
    adamw = {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-6, "amsgrad": False, "maximize": False, "foreach": None,
             "capturable": False, "differentiable": False, "fused": None, "decoupled_weight_decay": True}
    groups = [{"weight_decay": 0.0, **adamw, "params": ["model.logit_scale", "model.projector.fc1.bias"]},
              {"weight_decay": 0.1, **adamw, "params": ["model.projector.fc1.weight"]}]
    ranks = [str(r) for r in range(world_size)]
    return json.loads(json.dumps({
        "step": step, "total_steps": 8, "world_size": world_size, "data_workers": 0,
        "data": {r: {"0": {"epoch": 0, "pos": 16, "skipped": 0, "seen": 16}} for r in ranks},
        "rng": {r: ckpt.rng_state() for r in ranks},
        "optimizer": {"param_groups": groups, "scalars": {}},
        "schedule": {"total": 8, "lr": 1e-3, "warmup": 2, "schedule": "cosine", "min_lr": 0.0},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 0},
        "config": {"train": {"steps": 8}},
    }))


def write_state(root: Path, state, step: int = 4) -> Path:
    folder = root / ckpt.step_dir_name(step)
    folder.mkdir(parents=True, exist_ok=True)
    text = state if isinstance(state, str) else json.dumps(state)
    (folder / ckpt.STATE_NAME).write_text(text)
    return folder


def _set(path: str, value):
    """A damage: put ``value`` at a dotted path (list indices as numbers)."""
    def spoil(state):
        *parents, last = path.split(".")
        obj = state
        for key in parents:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        if isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return spoil


def _drop(path: str):
    def spoil(state):
        *parents, last = path.split(".")
        obj = state
        for key in parents:
            obj = obj[key]
        del obj[last]
    return spoil


# (damage, the field the message names); the ValueError / AttributeError / 10**30 cases come first
BAD_STATES = {
    "step_10_to_the_30": (_set("step", 10**30), "'step'"),
    "numpy_rng_not_a_state": (_set("rng.0.numpy", "garbage"), "'rng.0.numpy'"),
    "numpy_rng_bad_key": (_set("rng.0.numpy.0", "PCG64"), "'rng.0.numpy[0]'"),
    "numpy_rng_pos_out_of_range": (_set("rng.0.numpy.2", 900), "'rng.0.numpy[2]'"),
    "torch_rng_short": (lambda s: s["rng"]["0"].update(torch=[1, 2, 3]), "'rng.0.torch'"),
    "torch_rng_not_bytes": (_set("rng.0.torch.0", 300), "'rng.0.torch[0]'"),
    "torch_rng_float": (_set("rng.0.torch.0", 1.5), "'rng.0.torch[0]'"),
    "torch_rng_invalid_state": (lambda s: s["rng"]["0"].update(torch=[0] * len(s["rng"]["0"]["torch"])),
                                "'rng.0.torch'"),
    "python_rng_bad_index": (_set("rng.0.python.1.624", 700), "'rng.0.python[1][624]'"),
    "python_rng_version": (_set("rng.0.python.0", 2), "'rng.0.python[0]'"),
    "rng_unknown_part": (_set("rng.0.mersenne", []), "'rng.0.mersenne'"),
    "rng_not_an_object": (_set("rng", []), "'rng'"),
    "data_is_a_list": (_set("data", [1, 2]), "'data'"),
    "data_rank_missing": (_set("data", {}), "'data'"),
    "data_position_a_string": (_set("data.0", "start"), "'data.0'"),
    "data_unknown_worker": (_set("data.0.7", {"epoch": 0, "pos": 0}), "'data.0.7'"),
    "data_negative_pos": (_set("data.0.0.pos", -3), "'data.0.0.pos'"),
    "data_pos_missing": (_drop("data.0.0.pos"), "'data.0.0.pos'"),
    "world_size_string": (_set("world_size", "2"), "'world_size'"),
    "world_size_zero": (_set("world_size", 0), "'world_size'"),
    "world_size_without_ranks": (_set("world_size", 2), "'data'"),
    "data_workers_negative": (_set("data_workers", -1), "'data_workers'"),
    "total_steps_float": (_set("total_steps", 8.5), "'total_steps'"),
    "step_negative": (_set("step", -1), "'step'"),
    "step_bool": (_set("step", True), "'step'"),
    "lr_not_finite": (_set("optimizer.param_groups.0.lr", math.inf), "'optimizer.param_groups[0].lr'"),
    "betas_out_of_range": (_set("optimizer.param_groups.0.betas", [0.9, 5]), "'optimizer.param_groups[0].betas[1]'"),
    "params_not_names": (_set("optimizer.param_groups.0.params", [0, 1]), "'optimizer.param_groups[0].params[0]'"),
    "param_groups_missing": (_drop("optimizer.param_groups"), "'optimizer.param_groups'"),
    "scaler_missing_scale": (_drop("scaler.scale"), "'scaler.scale'"),
    "scaler_zero_scale": (_set("scaler.scale", 0.0), "'scaler.scale'"),
    "scaler_a_list": (_set("scaler", [1]), "'scaler'"),
    "misspelled_field": (lambda s: s.update(stpe=1), "'stpe' is not a train_state field (did you mean 'step'?)"),
    "config_a_string": (_set("config", "run.yaml"), "'config'"),
}


def test_the_state_the_trainer_writes_is_valid(tmp_path):
    for world_size in (1, 3):
        folder = write_state(tmp_path / f"w{world_size}", valid_state(world_size=world_size))
        assert ckpt.read_train_state(folder)["world_size"] == world_size


@pytest.mark.parametrize("damage", sorted(BAD_STATES))
def test_a_hostile_train_state_names_the_file_and_the_field(tmp_path, damage):
    spoil, field = BAD_STATES[damage]
    state = valid_state()
    spoil(state)
    folder = write_state(tmp_path, state)
    with pytest.raises(CheckpointError, match=re.escape(field)) as err:
        ckpt.read_train_state(folder)
    assert str(folder / ckpt.STATE_NAME) in str(err.value)
    assert "damaged or was edited" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ('{"step": ' + "1" * 5000 + "}", "unreadable"),  # int() refuses > 4300 digits (ValueError, not JSON's error)
    ("[" * 100_000 + "]" * 100_000, "unreadable"),  # RecursionError
    ("[1, 2, 3]", "lacks step, optimizer, data"),
    ("null", "lacks step"),
])
def test_train_state_that_is_not_an_object_of_sane_size(tmp_path, text, message):
    with pytest.raises(CheckpointError, match=message):
        ckpt.read_train_state(write_state(tmp_path, text))


def test_invalid_utf8_in_train_state_is_a_checkpoint_error(tmp_path):
    folder = write_state(tmp_path, valid_state())
    (folder / ckpt.STATE_NAME).write_bytes(b'{"step": 4, "x": "\xff"}')
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.read_train_state(folder)


def test_an_oversized_train_state_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "MAX_STATE_BYTES", 1000)
    with pytest.raises(CheckpointError, match="more than a training state can hold"):
        ckpt.read_train_state(write_state(tmp_path, valid_state()))


def test_a_step_that_disagrees_with_its_folder_is_refused(tmp_path):
    folder = write_state(tmp_path, valid_state(step=6), step=4)
    with pytest.raises(CheckpointError, match="field 'step' is 6, but the folder step_00000004"):
        ckpt.read_train_state(folder)


def test_the_error_names_the_newest_earlier_checkpoint_that_is_valid(tmp_path):
    root = tmp_path / "checkpoints"
    write_state(root, valid_state(step=2), step=2)
    write_state(root, {**valid_state(step=4), "world_size": "x"}, step=4)  # damaged too: not suggested
    bad = write_state(root, {**valid_state(step=6), "rng": {"0": {"numpy": 1}}}, step=6)
    with pytest.raises(CheckpointError) as err:
        ckpt.read_checkpoint_dir(bad)
    msg = str(err.value)
    assert "'rng.0" in msg and f"--resume {root / 'step_00000002'}" in msg and "step_00000004" not in msg


# ---------------------------------------------------------------------------------------------- the trainer
def test_cli_resume_from_a_hostile_train_state_is_one_line_and_keeps_the_metrics(reference, tmp_path, capsys):
    """The ValueError case end to end: `toklip train --resume latest` prints one line and changes nothing."""
    from toklip.cli import main

    out = copy_run(reference, tmp_path, steps=(6, 8))
    state_file = out / "checkpoints" / "step_00000008" / ckpt.STATE_NAME
    state = json.loads(state_file.read_text())
    state["rng"]["0"]["numpy"] = ["MT19937", "garbage", 0, 0, 0.0]
    state_file.write_text(json.dumps(state))
    metrics_before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(SystemExit) as info:
        main(["train", *base_overrides(reference["data"], out, **{"train.steps": 10}), "--resume", "latest"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert str(state_file) in err[0] and "'rng.0.numpy[1]'" in err[0]
    assert f"--resume {out / 'checkpoints' / 'step_00000006'}" in err[0]
    assert (out / "metrics.jsonl").read_bytes() == metrics_before  # refused before the log is touched


def test_resuming_a_checkpoint_past_the_configured_steps_is_refused(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    cfg = load_config(base_overrides(reference["data"], out, **{"train.steps": 4}))
    with pytest.raises(ConfigError, match="at step 8, past the 4 steps this run trains for: raise train.steps"):
        Trainer(cfg, echo=lambda m: None).fit(resume="latest")


def test_resume_with_a_damaged_log_keeps_every_line(reference, tmp_path):
    """End to end: a corrupt line in the middle of metrics.jsonl, resume from step 6, the run finishes 1..10."""
    out = copy_run(reference, tmp_path, steps=(6, 8))
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = b'{"step": 3, "loss": \n'  # damaged in the middle
    original = b"".join(lines)
    (out / "metrics.jsonl").write_bytes(original)
    shutil.rmtree(out / "checkpoints" / "step_00000008")
    cfg = load_config(base_overrides(reference["data"], out, **{"train.steps": 10, "train.ckpt_every": 2}))
    with pytest.warns(UserWarning, match=r"metrics.jsonl: 1 line \(3\) is not a metrics record") as caught:
        result = Trainer(cfg, echo=lambda m: None).fit(resume="latest")
    assert any("step_00000008" in str(w.message) and "newest checkpoint folder" in str(w.message)
               for w in caught)  # `latest` named the folder that is gone
    assert [h["step"] for h in result.history] == [7, 8, 9, 10]
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert read_metrics(out)[:2] == reference["metrics"][:2]
    assert (out / "metrics.jsonl.damaged-1").read_bytes() == original
