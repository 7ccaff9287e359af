"""Zero-shot classification: folder scanning, class names and templates, top-k, and the plumbing check (a
model that "knows" the classes must score 100%)."""

from __future__ import annotations

import json

import pytest
import torch

from toklip.core.errors import ConfigError
from toklip.eval.zeroshot import (
    build_classifier,
    resolve_classnames,
    resolve_templates,
    scan_folder,
    topk_accuracy,
    zero_shot,
)

from .conftest import FOLDER_TO_COLOR


def test_scan_folder_sorted_classes_skips_non_images(imagenet_folder):
    classes, paths, labels = scan_folder(imagenet_folder)
    assert classes == ["a_green", "b_blue", "c_red"]
    assert [p.parent.name for p in paths] == ["a_green"] * 2 + ["b_blue"] * 3 + ["c_red"] * 3
    assert labels == [0, 0, 1, 1, 1, 2, 2, 2]
    assert all(p.suffix == ".png" for p in paths)  # README.txt left out


def test_scan_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ConfigError, match="no class sub-folders"):
        scan_folder(tmp_path / "flat")
    (tmp_path / "flat" / "cls").mkdir()
    (tmp_path / "flat" / "cls" / "x.txt").write_text("")
    with pytest.raises(ConfigError, match="contain no images"):
        scan_folder(tmp_path / "flat")


def test_zero_shot_counts_skips_and_caps_topk(model, imagenet_folder):
    with pytest.warns(UserWarning, match="broken.png"):
        res = zero_shot(model, imagenet_folder, templates="a photo of a {}.", batch_size=3, workers=0, progress=False)
    assert res["classes"] == 3 and res["templates"] == 1
    assert res["images"] == 8 and res["evaluated"] == 7 and res["skipped"] == 1
    assert 0 <= res["top1"] <= 1
    assert res["top5"] == 1.0  # top-5 of 3 classes is capped at 3: always a hit
    assert {"task", "data", "seconds"} <= set(res)


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 0, 1])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == {1: 0.25, 2: 0.5, 5: 1.0}


def test_zero_shot_perfect_when_the_model_knows(model, imagenet_folder, knows_colors):
    """Class folders sort as a_green, b_blue, c_red; labels must meet the classifier columns in that order."""
    knows_colors(model)
    with pytest.warns(UserWarning):
        res = zero_shot(model, imagenet_folder, classnames=FOLDER_TO_COLOR,
                        templates=["a photo of a {}.", "a {} thing"], batch_size=3, workers=0, progress=False)
    assert res["evaluated"] == 7 and res["top1"] == 1.0
    # names in the wrong order -> the plumbing must notice (2 of 3 classes swapped: green/red images miss)
    with pytest.warns(UserWarning):
        wrong = zero_shot(model, imagenet_folder, classnames=["red", "blue", "green"], templates="{}",
                          workers=0, progress=False)
    assert wrong["top1"] == pytest.approx(2 / 7)


def test_build_classifier_shape_and_mixed_templates(model):
    w = build_classifier(model, ["cat", "dog", "car"], ["a photo of a {}.", lambda c: f"itap of a {c}."])
    assert w.shape == (64, 3) and w.dtype == torch.float32
    torch.testing.assert_close(w.norm(dim=0), torch.ones(3))


# ---------------------------------------------------------------------------------------------- class names
FOLDERS = ["golden_retriever", "tabby", "fire_truck"]


def test_classnames_from_folders():
    assert resolve_classnames(FOLDERS, None) == ["golden retriever", "tabby", "fire truck"]


def test_classnames_from_files(tmp_path):
    lines = tmp_path / "names.txt"
    lines.write_text("dog\n\ncat\n  truck  \n")
    assert resolve_classnames(FOLDERS, lines) == ["dog", "cat", "truck"]
    as_list = tmp_path / "names.json"
    as_list.write_text(json.dumps(["dog", "cat", "truck"]))
    assert resolve_classnames(FOLDERS, str(as_list)) == ["dog", "cat", "truck"]
    as_map = tmp_path / "map.json"
    as_map.write_text(json.dumps({"tabby": "tabby cat", "fire_truck": "fire engine", "golden_retriever": "dog",
                                  "unused": "x"}))
    assert resolve_classnames(FOLDERS, as_map) == ["dog", "tabby cat", "fire engine"]
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps({"0": ["n02", "goldfish"], "1": ["n01", "tench"]}))
    assert resolve_classnames(["n01", "n02"], index) == ["tench", "goldfish"]


def test_classnames_errors(tmp_path):
    with pytest.raises(ConfigError, match="2 class names for 3 class folders"):
        resolve_classnames(FOLDERS, ["a", "b"])
    with pytest.raises(ConfigError, match=r"no entry for folder\(s\) \['fire_truck'\]"):
        resolve_classnames(FOLDERS, {"golden_retriever": "dog", "tabby": "cat"})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_classnames(FOLDERS, tmp_path / "missing.txt")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_classnames(FOLDERS, bad)
    number = tmp_path / "number.json"
    number.write_text("3")
    with pytest.raises(ConfigError, match="class names must be"):
        resolve_classnames(FOLDERS, number)


def test_imagenet_1000_folders_use_openai_names():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = [f"n{i:08d}" for i in range(1000)]
    names = resolve_classnames(wnids, None)
    assert names == list(IMAGENET_CLASSNAMES) and names[0] == "tench"
    # 1000 folders that are not WordNet ids keep their own names
    own = [f"class_{i:04d}" for i in range(1000)]
    assert resolve_classnames(own, None)[0] == "class 0000"


# ---------------------------------------------------------------------------------------------- templates
def test_default_templates_are_openais_80():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    t = resolve_templates(None)
    assert len(t) == 80 and t[0]("cat") == OPENAI_IMAGENET_TEMPLATES[0]("cat") == "a bad photo of a cat."


def test_templates_from_strings_and_files(tmp_path):
    assert resolve_templates("a photo of {}.") == ["a photo of {}."]
    assert resolve_templates(["a {}", "the {}"]) == ["a {}", "the {}"]
    f = tmp_path / "templates.txt"
    f.write_text("a photo of a {}.\n\nart of the {}.\n")
    assert resolve_templates(str(f)) == ["a photo of a {}.", "art of the {}."]
    j = tmp_path / "templates.json"
    j.write_text(json.dumps(["itap of a {}."]))
    assert resolve_templates(j) == ["itap of a {}."]


@pytest.mark.parametrize("bad, match", [
    (["a photo"], "one '\\{\\}'"),
    (["{} and {}"], "one '\\{\\}'"),
    ([], "one '\\{\\}'"),
    ("missing_templates.txt", "does not exist"),
])
def test_template_errors(tmp_path, monkeypatch, bad, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=match):
        resolve_templates(bad)


def test_template_file_as_json_object(tmp_path):
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"a": "{}"}))
    with pytest.raises(ConfigError, match="not a JSON object"):
        resolve_templates(j)
