"""Exact resume (a new Trainer, and a `toklip train` process killed with SIGKILL) and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("webdataset", reason="training needs the train extra: pip install 'toklip[train]'")
yaml = pytest.importorskip("yaml")

from safetensors.torch import load_file  # noqa: E402

from toklip.train import checkpoint as ckpt  # noqa: E402
from toklip.train.trainer import Trainer  # noqa: E402

from .conftest import (  # noqa: E402
    REFERENCE_STEPS,
    REPO,
    Interrupt,
    base_overrides,
    load_config,
    read_metrics,
    stop_after_checkpoint,
    subprocess_env,
    trajectory,
)


def assert_same_weights(state: dict, reference: dict) -> None:
    assert set(state) == set(reference)
    worst = max(float((state[k].float() - reference[k].float()).abs().max()) for k in reference)
    assert worst == 0.0, f"weights differ from the uninterrupted run by up to {worst:g}"


def test_a_new_trainer_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(base_overrides(reference["data"], out, **{"train.ckpt_every": 2}))
    with pytest.raises(Interrupt):  # stop right after the step-4 checkpoint, as a crash would
        Trainer(cfg, echo=stop_after_checkpoint(4)).fit()
    assert ckpt.find_checkpoint(out, "latest").name == "step_00000004"
    assert len(read_metrics(out)) == 4

    result = Trainer(load_config(base_overrides(reference["data"], out, **{"train.ckpt_every": 2})),
                     echo=lambda m: None).fit(resume="latest")
    assert [h["step"] for h in result.history] == [5, 6, 7, 8]
    assert trajectory(read_metrics(out)) == trajectory(reference["metrics"])
    assert result.skipped_samples == reference["result"].skipped_samples
    assert_same_weights(result.model.state_dict(), reference["state"])
    a = load_file(str(out / "checkpoints" / "step_00000008" / "optimizer.safetensors"))
    b = load_file(str(reference["out"] / "checkpoints" / "step_00000008" / "optimizer.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)


def _split_config(overrides: list[str], tmp_path) -> tuple:
    """The model and data sections as a YAML file, the rest as command-line overrides."""
    in_file = {}
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        section, name = key.split(".", 1)
        if section in ("model", "data"):
            in_file.setdefault(section, {})[name] = yaml.safe_load(value)
        else:
            rest.append(item)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(in_file))
    return path, rest


@pytest.mark.slow
def test_sigkill_then_resume_latest_matches_the_uninterrupted_run(reference, tmp_path, capsys):
    out = tmp_path / "run"
    config, rest = _split_config(base_overrides(reference["data"], out, **{"train.ckpt_every": 2}), tmp_path)
    cmd = [sys.executable, "-m", "toklip.train.cli", str(config), *rest]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "checkpoints" / "step_00000002"

    def lines() -> int:
        path = out / "metrics.jsonl"
        return path.read_text().count("\n") if path.is_file() else 0

    try:
        deadline = time.monotonic() + 120
        # poll the file system until the step-2 checkpoint exists and a later step is logged, then kill: the
        # resumed run must drop the metrics lines past its checkpoint
        while not (first.is_dir() and lines() > 2):
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = ckpt.find_checkpoint(out, "latest")
    assert killed_at is not None and int(killed_at.name[5:]) < REFERENCE_STEPS
    assert lines() > int(killed_at.name[5:])

    # the same command with --resume latest (in this process: same threads, so the numbers match bit for bit)
    from toklip.cli import main

    capsys.readouterr()
    main(["train", str(config), *rest, "--resume", "latest"])
    assert f"resumed from {killed_at}" in capsys.readouterr().out
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, REFERENCE_STEPS + 1))  # one line per step
    assert trajectory(metrics) == trajectory(reference["metrics"])
    state = load_file(str(out / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert_same_weights(state, reference["state"])
    assert not list((out / "checkpoints").glob(".*"))  # a write cut short by the kill is cleaned up
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["data"]["path"] == str(reference["data"]) and resolved["model"]["image_size"] == 32
    assert resolved["train"]["steps"] == REFERENCE_STEPS and resolved["train"]["ckpt_every"] == 2


def test_metrics_past_the_resumed_step_and_a_torn_line_are_dropped(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    good = [json.dumps({"step": i, "loss": 1.0 / i}) for i in range(1, 6)]
    (out / "metrics.jsonl").write_text("\n".join(good) + '\n{"step": 6, "lo')  # killed mid-line
    trainer = Trainer.__new__(Trainer)
    trainer.out_dir = out
    trainer._metrics_file(4).close()
    assert (out / "metrics.jsonl").read_text() == "\n".join(good[:4]) + "\n"
    trainer._metrics_file(0).close()  # a run that starts over starts a new log
    assert (out / "metrics.jsonl").read_text() == ""


def test_cli_reports_a_bad_data_path_in_one_line(tmp_path, capsys):
    from toklip.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", *base_overrides(tmp_path / "no-such-data", tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: data.path {str(tmp_path / 'no-such-data')!r} does not exist"]
    assert not (tmp_path / "out").exists()


def test_cli_reports_unreadable_data_in_one_line(tmp_path, capsys):
    """A data set without one readable sample, read by a loader worker: one line, no traceback."""
    from toklip.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.jpg").write_bytes(b"not a jpeg")
        (data / f"{i}.txt").write_text("a caption")
    with pytest.raises(SystemExit) as info, pytest.warns(UserWarning):
        main(["train", *base_overrides(data, tmp_path / "out", **{"data.workers": 1, "train.steps": 1})])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no readable sample" in errors[0], err[-3000:]


def test_resume_is_exact_with_a_transform_drawing_from_the_global_rng(reference, tmp_path):
    """Starting the data loader must not consume the global RNG, or a resumed run's augmentations would differ."""

    def noisy(image: torch.Tensor) -> torch.Tensor:  # an augmentation that uses torch's global generator
        return (image + 0.05 * torch.randn(image.shape)).clamp(-1, 1)

    def run(out, *, echo=lambda m: None, resume=None):
        cfg = load_config(base_overrides(reference["data"], out, **{"train.ckpt_every": 2}))
        return Trainer(cfg, transform=noisy, echo=echo).fit(resume=resume)

    full = run(tmp_path / "full")
    with pytest.raises(Interrupt):
        run(tmp_path / "split", echo=stop_after_checkpoint(4))
    resumed = run(tmp_path / "split", resume="latest")
    assert trajectory(read_metrics(tmp_path / "split")) == trajectory(read_metrics(tmp_path / "full"))
    assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
