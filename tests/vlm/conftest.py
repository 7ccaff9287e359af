"""Tiny language models for the VLM tests: a word-level tokenizer trained here and a random-init Llama saved to a
temporary folder (nothing is downloaded), and LLaVA-format conversation files with small PNG images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

WORDS = ["what digit is this ?", "describe the image .", "zero one two three four five six seven eight nine",
         "a red handwritten seven on yellow paper", "what colour is the ink ? red blue green black"]
ANSWERS = ["zero", "one", "two", "three"]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from more; runs compared bit for bit use the same count
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory) -> Path:
    from toklip.vlm.tiny import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama", WORDS)


@pytest.fixture(scope="module")
def vlm(llm_dir):
    from toklip.vlm.model import build_vlm

    torch.manual_seed(0)
    return build_vlm(tokenizer="toklip-test", llm=llm_dir)


def image(i: int, size: int = 64) -> torch.Tensor:
    """A deterministic image [3, size, size] in [-1, 1]."""
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) * 2 - 1


def write_llava(root: Path, n: int, *, missing: tuple[int, ...] = (), text_only: tuple[int, ...] = ()) -> Path:
    """``root/data.json`` with ``n`` one-image conversations (answers cycle through ANSWERS) and ``root/img/*.png``;
    ``missing`` records name an image that does not exist, ``text_only`` ones have no image."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        arr = np.random.RandomState(i).randint(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img" / f"{i:03d}.png")
        rec = {"id": str(i), "conversations": [
            {"from": "human", "value": "what digit is this ?" if i in text_only else "<image>\nwhat digit is this ?"},
            {"from": "gpt", "value": ANSWERS[i % len(ANSWERS)]}]}
        if i not in text_only:
            rec["image"] = f"img/{'nope' if i in missing else ''}{i:03d}.png"
        records.append(rec)
    path = root / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
