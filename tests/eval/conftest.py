"""Shared fixtures of the evaluation tests: one tiny model (and its save_pretrained folder), small on-disk
data sets in the ImageNet and COCO-captions layouts, and a way to make the model "know" colours exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

COLORS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (240, 230, 30)}
NAMES = list(COLORS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model's convolutions are fastest (and steadiest on a shared machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(toklip-test in eval mode, the folder it was saved to with save_pretrained)."""
    from toklip.testing import saved_tiny_model

    folder = tmp_path_factory.mktemp("eval-model") / "toklip-test-saved"
    model = saved_tiny_model(folder)
    return model, folder


@pytest.fixture
def model(tiny):
    return tiny[0]


def png(path: Path, color, size=(40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return path


@pytest.fixture
def imagenet_folder(tmp_path) -> Path:
    """3 class folders whose sorted order (a_green, b_blue, c_red) differs from their creation order; 2-3
    images each, one corrupt image, one non-image file."""
    root = tmp_path / "val"
    for folder, color, n in (("c_red", "red", 3), ("a_green", "green", 2), ("b_blue", "blue", 2)):
        for i in range(n):
            png(root / folder / f"img{i}.png", COLORS[color], size=(40 + 7 * i, 32 + 3 * i))
    corrupt(root / "b_blue" / "broken.png")
    (root / "a_green" / "README.txt").write_text("not an image")
    return root


FOLDER_TO_COLOR = {"a_green": "green", "b_blue": "blue", "c_red": "red"}


@pytest.fixture
def coco_folder(tmp_path) -> tuple[Path, Path]:
    """(captions JSON in the ALBEF list layout, its folder): 4 images, the second one corrupt."""
    root = tmp_path / "coco"
    entries = []
    for i, color in enumerate(NAMES):
        rel = f"val2014/{i:03d}_{color}.png"
        if i == 1:
            corrupt(root / rel)
        else:
            png(root / rel, COLORS[color])
        entries.append({"image": rel, "caption": [f"a {color} square", f"something {color}", f"{color} all over"]})
    path = root / "captions.json"
    path.write_text(json.dumps(entries))
    return path, root


def color_index(text: str) -> int:
    hits = [i for i, c in enumerate(NAMES) if c in text]
    assert len(hits) == 1, text
    return hits[0]


@pytest.fixture
def knows_colors(monkeypatch):
    """Patch a model so that an image's embedding is the one-hot of its colour and a text's embedding the
    one-hot of the colour it names: a correct evaluation must then score 100%."""

    def patch(model):
        e = len(NAMES) + 3  # a little wider than needed, so the extra dims must stay unused

        def encode_image(images, normalize=False):
            rgb = ((images.float().mean(dim=(2, 3)) + 1) * 127.5).cpu()  # [B, 3] mean colour
            ref = torch.tensor([COLORS[c] for c in NAMES], dtype=torch.float32)
            idx = torch.cdist(rgb, ref).argmin(dim=1)
            out = F.one_hot(idx, e).float().to(images.device)
            return F.normalize(out, dim=-1) if normalize else out

        def tokenizer(texts):
            return torch.tensor([[color_index(t)] for t in texts], dtype=torch.long)

        def encode_text(texts, normalize=False):
            ids = texts if isinstance(texts, torch.Tensor) else tokenizer([texts] if isinstance(texts, str) else texts)
            out = F.one_hot(ids[:, 0], e).float()
            return F.normalize(out, dim=-1) if normalize else out

        monkeypatch.setattr(model, "encode_image", encode_image)
        monkeypatch.setattr(model, "encode_text", encode_text)
        monkeypatch.setattr(model, "tokenizer", tokenizer)
        return model

    return patch
