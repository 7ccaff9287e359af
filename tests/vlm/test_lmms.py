"""The lmms-eval model class: request handling with lmms-eval's Instance faked minimally (always), and a tiny local
task through the real harness (slow; only where lmms-eval is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from toklip.vlm.lmms import VLMRequests, cut_at
from toklip.vlm.model import causal_lm_loss

from .conftest import image

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeInstance:
    """What the model class reads of lmms-eval's Instance: ``args``."""

    args: tuple


DOCS = {"tiny": {"test": [{"img": 0, "answer": "zero"}, {"img": 1, "answer": "one"}, {"img": 2, "answer": "two"}]}}


def _docs(task, split, doc_id):
    return DOCS[task][split][doc_id]


def _visual(doc):
    return [image(doc["img"])]


def test_generate_until_answers_in_order_and_cuts_at_stop_strings(vlm):
    greedy = {"max_new_tokens": 5, "temperature": 0, "do_sample": False, "until": ["zzz"]}
    short = {"max_new_tokens": 2, "temperature": 0, "until": ["\n"]}
    reqs = [FakeInstance(("what digit is this ?", greedy, _visual, i, "tiny", "test")) for i in range(3)]
    reqs.insert(1, FakeInstance(("what digit is this ?", short, _visual, 2, "tiny", "test")))
    out = VLMRequests(vlm, _docs, batch_size=2).generate_until(reqs)
    direct = [vlm.chat(image(i), "what digit is this ?", max_new_tokens=5, do_sample=False) for i in range(3)]
    assert [out[0], out[2], out[3]] == direct
    assert out[1] == vlm.chat(image(2), "what digit is this ?", max_new_tokens=2, do_sample=False)
    assert cut_at("seven . eight", ["."]) == "seven " and cut_at("abc", []) == "abc"


def test_loglikelihood_is_the_summed_log_probability_of_the_continuation(vlm):
    reqs = [FakeInstance(("what digit is this ?", " seven", _visual, 0, "tiny", "test")),
            FakeInstance(("what digit is this ?", lambda doc: doc["answer"], _visual, 1, "tiny", "test"))]
    (lp_seven, _), (lp_one, _) = VLMRequests(vlm, _docs).loglikelihood(reqs)
    # the same number from the training loss: labels on the continuation only
    prompt = vlm.prepare(["<image>\nwhat digit is this ?"], [image(0)], add_generation_prompt=True)
    seven = vlm.tokenizer(" seven", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor([seven])], dim=1)
    labels = torch.full_like(ids, -100)
    labels[0, -len(seven):] = torch.tensor(seven)
    with torch.no_grad():
        loss = causal_lm_loss(vlm(ids, images=prompt["images"])["logits"], labels)
    assert lp_seven == pytest.approx(-float(loss) * len(seven), rel=1e-5)
    assert lp_one < 0 and lp_seven != lp_one
    # the greedy continuation is reported as greedy
    first = vlm.generate_ids(["<image>\nwhat digit is this ?"], [[image(0)]], max_new_tokens=1, do_sample=False)
    word = vlm.tokenizer.decode(first[0])
    _, is_greedy = VLMRequests(vlm, _docs).loglikelihood(
        [FakeInstance(("what digit is this ?", word, _visual, 0, "tiny", "test"))])[0]
    assert is_greedy


def test_video_visuals_are_refused_clearly(vlm):
    from toklip import InputError

    req = FakeInstance(("what happens ?", {}, lambda doc: ["clip.mp4"], 0, "tiny", "test"))
    with pytest.raises(InputError, match="images only"):
        VLMRequests(vlm, _docs).generate_until([req])


TASK_YAML = """task: toklip_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
  until: ["zzz"]
process_results: !function utils.process_results
metric_list:
  - metric: match
    aggregation: mean
    higher_is_better: true
"""
MC_YAML = """task: toklip_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
doc_to_choice: ["zero", "one", "two", "three"]
metric_list:
  - metric: acc
"""
UTILS = '''from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return "what digit is this ?"


def doc_to_target(doc):
    return ["zero", "one", "two", "three"].index(doc["answer"])


def process_results(doc, results):
    return {"match": float(results[0].strip() == doc["answer"])}
'''


@pytest.mark.slow
def test_lmms_eval_runs_a_tiny_local_task(vlm, tmp_path):
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install lmms-eval)")
    from PIL import Image

    folder = vlm.save_pretrained(tmp_path / "vlm")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = tmp_path / "docs.jsonl"
    lines = []
    for i, answer in enumerate(["zero", "one", "two", "three"]):
        arr = ((image(i).permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": str(tmp_path / f"{i}.png"), "answer": answer}))
    docs.write_text("\n".join(lines) + "\n")
    (tasks / "toklip_tiny.yaml").write_text(TASK_YAML.format(docs=docs))
    (tasks / "toklip_tiny_mc.yaml").write_text(MC_YAML.format(docs=docs))
    (tasks / "utils.py").write_text(UTILS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "WANDB_MODE": "disabled"}
    run = subprocess.run(
        [sys.executable, "-m", "toklip.vlm.lmms", "--model", "toklip", "--model_args",
         f"pretrained={folder},device=cpu,dtype=fp32", "--tasks", "toklip_tiny,toklip_tiny_mc",
         "--include_path", str(tasks), "--batch_size", "1", "--output_path", str(tmp_path / "out"),
         "--log_samples"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*results*.json")]
    assert results, run.stdout[-2000:]
    scores = results[0]["results"]
    assert 0.0 <= scores["toklip_tiny"]["match,none"] <= 1.0
    assert 0.0 <= scores["toklip_tiny_mc"]["acc,none"] <= 1.0
    samples = [json.loads(line) for p in (tmp_path / "out").rglob("*samples_toklip_tiny.jsonl")
               for line in p.read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3]
    replies = {s["target"]: s["filtered_resps"] for s in samples}
    assert replies["zero"] == vlm.chat(tmp_path / "0.png", "what digit is this ?", max_new_tokens=3, do_sample=False)
