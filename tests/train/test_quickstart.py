"""The quickstart and the ablation harness, end to end at a tiny scale (the full run is measured in the notes)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from toklip.train import digits as D
from toklip.train import quickstart as Q

SMOKE = 0.03  # steps x 0.03: a few dozen optimizer steps per stage


class JumpingClock:
    """A clock that moves an hour forward at every reading: a stage that stops at a time budget stops at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += 3600.0
        return self.now


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    """One smoke run, on a clock that jumps an hour per reading (the slowest machine there is). It takes longer
    than a few seconds, so the tests that use it are marked slow."""
    from toklip.core.host import PluginHost, use_host

    out = tmp_path_factory.mktemp("quickstart")
    clock = JumpingClock()
    with pytest.MonkeyPatch.context() as mp, use_host(PluginHost(autoload=False, strict=True)):
        for name in ("perf_counter", "monotonic", "time"):
            mp.setattr(time, name, clock)
        result = CliRunner().invoke(Q.quickstart_command, ["--out", str(out), "--scale", str(SMOKE), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert clock.readings > 10  # the stages did read the clock
    return out, result.output, json.loads((out / "report.json").read_text())


def test_digits_split_has_no_scan_on_both_sides():
    train, test = D.load_digits(16, train_copies=2, seed=0)
    assert train.images.shape[1:] == (16, 16, 3) and train.images.dtype.name == "uint8"
    assert len(train) == 2 * (1797 - len(test)) and len(test) == 360
    # every training scan appears in two colourings; no test scan equals a training scan in ink amounts
    gray_train = {D.to_tensor(train.images[i:i + 1]).std(1).round(decimals=2).sum().item() for i in range(50)}
    assert len(gray_train) > 10
    assert set(test.labels.tolist()) == set(range(10))
    assert "handwritten" in test.caption(0) and D.WORDS[int(test.labels[0])] in test.caption(0)


@pytest.mark.slow
def test_every_stage_trains_its_fixed_steps_however_slow_the_clock(quickstart_dir):
    out, output, report = quickstart_dir
    steps = Q.Steps.scaled(SMOKE)
    assert (steps.vq, steps.teacher, steps.toklip) == (9, 24, 18)
    assert report["vq"]["steps"] == steps.vq and not report["vq"].get("reused")
    assert report["teacher"]["steps"] == steps.teacher
    assert report["toklip"]["steps"] == steps.toklip
    assert len((out / "run" / "metrics.jsonl").read_text().splitlines()) == steps.toklip
    # the time is reported (hours per reading here), never traded for steps
    assert report["seconds"]["total"] > 3600 and report["seconds"]["vq_and_teacher"] > 0
    assert f"VQ {steps.vq} x {Q.VQ_BATCH}" in output and "fixed, whatever the time" in output
    # a smoke run is not held to the floors, and says so
    assert report["quality"]["checked"] is False and "not checked" in output


@pytest.mark.slow
def test_quickstart_writes_everything_it_promises(quickstart_dir):
    import toklip

    out, output, report = quickstart_dir
    for name in ("vq.pt", "teacher_open_clip.safetensors", "vq_reconstructions.png", "features_tsne_cosine.png",
                 "report.json", "toklip/model.safetensors", "toklip/config.json", "data/test_captions.json",
                 "data/classnames.json", "run/metrics.jsonl", "run/config.resolved.yaml"):
        assert (out / name).is_file(), name
    for key in ("zero_shot_top1", "zero_shot_top5", "image_to_text_R@1", "text_to_image_R@10", "cosine_same_image"):
        assert 0.0 <= report["toklip"][key] <= 1.0 or key == "cosine_same_image"
    assert report["vq"]["codes_used"] > 1
    assert "zero-shot top-1 (chance 10%)" in output and "teacher CLIP" in output
    # the VQ file is LlamaGen's release layout and the teacher an open_clip state dict
    vq = torch.load(out / "vq.pt", weights_only=True)
    assert set(vq) == {"model"} and "quantize.embedding.weight" in vq["model"]
    from safetensors.torch import load_file

    teacher = load_file(out / "teacher_open_clip.safetensors")
    assert any(k.startswith("visual.trunk.") for k in teacher) and any(k.startswith("text.") for k in teacher)
    assert "logit_scale" in teacher
    # the saved TokLIP reloads and gives the same embedding
    model = toklip.from_pretrained(out / "toklip").eval()
    _, test = D.load_digits(16)
    x = D.to_tensor(test.images[:4])
    assert model.encode_image(x).shape == (4, 64)
    assert model.vq.encode(x).indices.shape == (4, 8, 8)


def test_quality_failures_name_each_stage_below_its_floor_and_what_it_reached():
    report = Q.QuickstartReport(out_dir="x", vq={"psnr_db": 27.1}, teacher={"zero_shot_top1": 0.93},
                                toklip={"zero_shot_top1": 0.91}, generator={"class_accuracy": 0.6})
    assert Q.quality_failures(report) == []
    report.generator["class_accuracy"] = 0.11
    assert Q.quality_failures(report) == ["stage 5/5, the generator: class accuracy of its samples 11.0%, below its "
                                          "floor of 25.0%"]
    report.generator["class_accuracy"] = 0.6
    report.vq["psnr_db"] = 12.34
    report.toklip["zero_shot_top1"] = 0.05
    failures = Q.quality_failures(report)
    assert len(failures) == 2
    assert "stage 1/5, the VQ tokenizer" in failures[0] and "12.3 dB" in failures[0] and "20.0 dB" in failures[0]
    assert "stage 3/5, TokLIP" in failures[1] and "5.0%" in failures[1] and "50.0%" in failures[1]
    report.teacher["zero_shot_top1"] = float("nan")  # a broken evaluation is a failure, not a pass
    assert any("teacher" in f for f in Q.quality_failures(report))


@pytest.mark.slow
def test_a_stage_below_its_floor_fails_the_command_loudly_and_still_writes_the_report(quickstart_dir, monkeypatch):
    from toklip.core.host import PluginHost, use_host

    out = quickstart_dir[0]
    real_evaluate = Q.evaluate

    def broken_teacher(model, *args, **kwargs):
        metrics = real_evaluate(model, *args, **kwargs)
        return {**metrics, "zero_shot_top1": 0.03} if isinstance(model, Q.TeacherAsModel) else metrics

    monkeypatch.setattr(Q, "evaluate", broken_teacher)
    # the figures (t-SNE) are the fixture's business; here they would only cost time
    monkeypatch.setattr(Q, "figure_reconstructions", lambda model, test, path: path)
    monkeypatch.setattr(Q, "figure_features", lambda *a, **k: {"cosine_same_image": 1.0, "cosine_random_pair": 0.0})
    (out / "report.json").unlink()
    with use_host(PluginHost(autoload=False, strict=True)):
        result = CliRunner().invoke(Q.quickstart_command,
                                    ["--out", str(out), "--scale", str(SMOKE), "--quiet", "--check"])
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "FAILED its quality check" in result.output
    assert "stage 2/5, the teacher CLIP: zero-shot top-1 3.0%, below its floor of 50.0%" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["quality"]["checked"] is True
    assert any("teacher CLIP: zero-shot top-1 3.0%" in f for f in report["quality"]["failures"])
    assert report["teacher"]["zero_shot_top1"] == 0.03 and report["toklip"]["steps"] == Q.Steps.scaled(SMOKE).toklip


@pytest.mark.slow
def test_quickstart_model_is_initialised_from_the_teacher(quickstart_dir):
    from safetensors.torch import load_file

    from toklip.train.quickstart import build_toklip

    out = quickstart_dir[0]
    teacher = load_file(out / "teacher_open_clip.safetensors")
    model = build_toklip(out)
    block = "visual.trunk.blocks.0.attn.qkv.weight"
    ours = dict(model.token_encoder.named_parameters())
    name = next(n for n in ours if n.endswith("blocks.0.attn.qkv.weight"))
    assert torch.equal(ours[name], teacher[block])
    random_init = build_toklip(out, init="random")
    assert not torch.equal(dict(random_init.token_encoder.named_parameters())[name], teacher[block])
    # the text tower is the teacher's in both (frozen, as the paper's)
    assert torch.equal(model.text.token_embedding.weight, random_init.text.token_embedding.weight)


@pytest.mark.slow
def test_ablate_reuses_the_quickstart_components_and_prints_a_table(quickstart_dir):
    from toklip.train.ablate import ablate_command

    out = quickstart_dir[0]
    before = (out / "vq.pt").stat().st_mtime_ns
    result = CliRunner().invoke(ablate_command, ["--out", str(out), "--scale", str(SMOKE), "--quiet",
                                                 "--only", "toklip", "--only", "codebook"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "reusing the VQ tokenizer and teacher" in result.output
    assert (out / "vq.pt").stat().st_mtime_ns == before
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["toklip", "codebook"]
    assert all(r["steps"] == Q.Steps.scaled(SMOKE).toklip for r in rows)
    assert "zero-shot top-1" in result.output and "codebook" in result.output


@pytest.mark.slow
def test_components_made_with_other_steps_are_not_reused(quickstart_dir, monkeypatch):
    """A folder trained at another --scale must not pass for this one: the result would depend on history."""
    out = quickstart_dir[0]
    train, _ = D.load_digits(Q.IMAGE_SIZE, seed=0)
    trained = []
    monkeypatch.setattr("toklip.train.vq_train.train_vq", lambda *a, **k: trained.append(k["steps"]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Q.train_components(out, train, Q.Steps.scaled(SMOKE * 2), echo=lambda s: None)
    assert trained == [Q.Steps.scaled(SMOKE * 2).vq]
    info = Q.train_components(out, train, Q.Steps.scaled(SMOKE), echo=lambda s: None)
    assert info["vq"] == {"steps": Q.Steps.scaled(SMOKE).vq, "reused": True}


@pytest.mark.slow
def test_ablate_rejects_unknown_variants(quickstart_dir):
    from toklip.train.ablate import ablate_command

    out = quickstart_dir[0]
    result = CliRunner().invoke(ablate_command, ["--out", str(out), "--only", "codebok", "--quiet"])
    assert result.exit_code != 0 and "codebok" in result.output
