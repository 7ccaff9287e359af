"""The embedded Table 1 (`toklip ablate comprehension`): questions and answers from the digits' captions, the
honest verdict, and (slow) the whole run at smoke scale, repeated bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toklip.vlm import ablate as A


def test_answers_come_from_labels_and_colours():
    from toklip.train.digits import Digits

    data = Digits(np.zeros((2, 16, 16, 3), np.uint8), np.array([7, 0]), ["red", "blue"], ["yellow", "white"])
    answers = A.answers_of(data)
    assert answers == {"digit": ["seven", "zero"], "ink": ["red", "blue"], "paper": ["yellow", "white"],
                       "describe": ["a red handwritten seven on yellow paper", "a blue handwritten zero on white paper"]}
    assert data.caption(0) == "a photo of " + answers["describe"][0]  # the quickstart's own caption


def test_the_verdict_says_where_toklip_wins_ties_and_loses():
    tk = {"digit": 0.9, "ink": 1.0, "paper": 0.5, "describe": 0.8, "mean": 0.8}
    vq = {"digit": 0.5, "ink": 1.0, "paper": 0.7, "describe": 0.4, "mean": 0.65}
    text = A.verdict(tk, vq)
    assert text.startswith("TokLIP features beat the VQ tokens on digit, describe; tie on ink; lose on paper")
    assert "TokLIP ahead" in text
    assert "NOT ahead" in A.verdict(vq, tk)


def test_majority_is_the_floor_of_an_llm_blind_to_images():
    train = A.Digits({}, {q: ["a", "a", "b"] for q in A.QUESTIONS})
    test = A.Digits({}, {q: ["a", "b", "b", "b"] for q in A.QUESTIONS})
    assert A.majority(train, test) == {**{q: 0.25 for q in A.QUESTIONS}, "mean": 0.25}


@pytest.mark.slow
def test_the_comprehension_ablation_runs_and_repeats_exactly(tmp_path):
    result = A.run_comprehension_ablation(tmp_path, steps=40, seed=0, echo=lambda s: None, toklip_scale=0.05)
    assert [r["features"] for r in result["rows"]] == ["toklip", "vq"]
    for row in result["rows"]:
        assert all(0.0 <= row[q] <= 1.0 for q in (*A.QUESTIONS, "mean")) and np.isfinite(row["final_loss"])
    assert result["rows"][1]["feature_dim"] == 8  # the quickstart VQ's code vectors
    assert json.loads((tmp_path / "comprehension.json").read_text())["verdict"] == result["verdict"]
    again = A.run_comprehension_ablation(tmp_path, steps=40, seed=0, echo=lambda s: None)  # reuses the TokLIP
    strip = lambda r: [{k: v for k, v in row.items() if k != "seconds"} for row in r["rows"]]
    assert strip(again) == strip(result)
    table = A.format_table(result)
    assert "TokLIP features" in table and "VQ code vectors" in table and "majority answer" in table
