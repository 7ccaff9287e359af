"""The quickstart and the ablation harness, end to end at a tiny scale (the full run is measured in the notes)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from toklip.train import digits as D

SMOKE = 0.03  # steps x 0.03: a few dozen optimizer steps per stage


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    from toklip.plugins import PluginHost, use_host
    from toklip.train.quickstart import quickstart_command

    out = tmp_path_factory.mktemp("quickstart")
    with use_host(PluginHost(autoload=False, strict=True)):
        result = CliRunner().invoke(quickstart_command, ["--out", str(out), "--scale", str(SMOKE), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_digits_split_has_no_scan_on_both_sides():
    train, test = D.load_digits(16, train_copies=2, seed=0)
    assert train.images.shape[1:] == (16, 16, 3) and train.images.dtype.name == "uint8"
    assert len(train) == 2 * (1797 - len(test)) and len(test) == 360
    # every training scan appears in two colourings; no test scan equals a training scan in ink amounts
    gray_train = {D.to_tensor(train.images[i:i + 1]).std(1).round(decimals=2).sum().item() for i in range(50)}
    assert len(gray_train) > 10
    assert set(test.labels.tolist()) == set(range(10))
    assert "handwritten" in test.caption(0) and D.WORDS[int(test.labels[0])] in test.caption(0)


def test_quickstart_writes_everything_it_promises(quickstart_dir):
    import toklip

    out, output = quickstart_dir
    for name in ("vq.pt", "teacher_open_clip.safetensors", "vq_reconstructions.png", "features_tsne_cosine.png",
                 "report.json", "toklip/model.safetensors", "toklip/config.json", "data/test_captions.json",
                 "data/classnames.json", "run/metrics.jsonl", "run/config.resolved.yaml"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
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


def test_quickstart_model_is_initialised_from_the_teacher(quickstart_dir):
    from safetensors.torch import load_file

    from toklip.train.quickstart import build_toklip

    out, _ = quickstart_dir
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


def test_ablate_reuses_the_quickstart_components_and_prints_a_table(quickstart_dir):
    from toklip.train.ablate import ablate_command

    out, _ = quickstart_dir
    before = (out / "vq.pt").stat().st_mtime_ns
    result = CliRunner().invoke(ablate_command, ["--out", str(out), "--scale", str(SMOKE), "--quiet",
                                                 "--only", "toklip", "--only", "codebook"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "reusing the VQ tokenizer and teacher" in result.output
    assert (out / "vq.pt").stat().st_mtime_ns == before
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["toklip", "codebook"]
    assert "zero-shot top-1" in result.output and "codebook" in result.output


def test_ablate_rejects_unknown_variants(quickstart_dir):
    from toklip.train.ablate import ablate_command

    out, _ = quickstart_dir
    result = CliRunner().invoke(ablate_command, ["--out", str(out), "--only", "codebok", "--quiet"])
    assert result.exit_code != 0 and "codebok" in result.output
