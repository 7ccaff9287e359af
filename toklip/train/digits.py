"""The quickstart's data: scikit-learn's bundled handwritten digits (1797 real 8x8 scans, UCI), coloured.

Each digit is upsampled to ``size`` px and drawn in an ink colour on a paper colour, and its caption is made
from its label and those two colours ("a red handwritten seven on yellow paper"). The colours make the
images RGB and give retrieval something to tell apart beyond the class; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INKS = {"black": (20, 20, 20), "red": (200, 30, 30), "blue": (30, 50, 210), "green": (20, 140, 40)}
PAPERS = {"white": (250, 250, 250), "yellow": (250, 230, 120), "pink": (250, 190, 210)}
TRAIN_TEMPLATES = (
    "a photo of a {ink} handwritten {word} on {paper} paper",
    "the digit {word} written in {ink} ink on {paper} paper",
    "a {ink} {word} on a {paper} background",
    "{word}, {ink} ink, {paper} paper",
    "a handwritten number {digit} in {ink} on {paper}",
    "a photo of the digit {word}.",  # colour-free captions: the zero-shot prompts' own wording
    "a handwritten {word}.",
    "the number {word}.",
)
EVAL_CAPTION = "a photo of a {ink} handwritten {word} on {paper} paper"
ZERO_SHOT_TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.", "the number {}.")


@dataclass
class Digits:
    images: np.ndarray  # [N, S, S, 3] uint8
    labels: np.ndarray  # [N] int64
    inks: list[str]
    papers: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, i: int, template: str = EVAL_CAPTION) -> str:
        d = int(self.labels[i])
        return template.format(ink=self.inks[i], paper=self.papers[i], word=WORDS[d], digit=d)

    def subset(self, idx: np.ndarray) -> Digits:
        return Digits(self.images[idx], self.labels[idx], [self.inks[i] for i in idx], [self.papers[i] for i in idx])


def _upsample(gray: np.ndarray, size: int) -> np.ndarray:
    """[N, 8, 8] ink amounts in [0, 1] -> [N, size, size] with PIL bicubic."""
    from PIL import Image

    out = np.empty((len(gray), size, size), dtype=np.float32)
    for i, g in enumerate(gray):
        im = Image.fromarray((g * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(im, dtype=np.float32) / 255.0
    return out


def colorize(ink_amount: np.ndarray, inks: list[str], papers: list[str]) -> np.ndarray:
    ink = np.array([INKS[c] for c in inks], dtype=np.float32)[:, None, None, :]
    paper = np.array([PAPERS[c] for c in papers], dtype=np.float32)[:, None, None, :]
    v = ink_amount[..., None]
    return np.clip(paper * (1 - v) + ink * v + 0.5, 0, 255).astype(np.uint8)


def _draw(gray: np.ndarray, labels: np.ndarray, copies: int, rng: np.random.Generator) -> Digits:
    images, all_labels, inks, papers = [], [], [], []
    ink_names, paper_names = list(INKS), list(PAPERS)
    for _ in range(copies):
        ink = [ink_names[i] for i in rng.integers(len(ink_names), size=len(gray))]
        paper = [paper_names[i] for i in rng.integers(len(paper_names), size=len(gray))]
        images.append(colorize(gray, ink, paper))
        all_labels.append(labels)
        inks += ink
        papers += paper
    return Digits(np.concatenate(images), np.concatenate(all_labels), inks, papers)


def load_digits(size: int = 32, *, train_copies: int = 2, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[Digits, Digits]:
    """(train, test): a stratified split of the 1797 scans *before* colouring, so no handwritten digit is in
    both; each training scan is drawn ``train_copies`` times in random (seeded) colours, each test scan once."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    raw = sk_load()
    gray = _upsample(raw.images.astype(np.float32) / 16.0, size)
    labels = raw.target.astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    tr, te = np.sort(tr), np.sort(te)
    rng = np.random.default_rng(seed)
    return _draw(gray[tr], labels[tr], train_copies, rng), _draw(gray[te], labels[te], 1, rng)


def to_tensor(images: np.ndarray):  # type: ignore[no-untyped-def]
    """[N, S, S, 3] uint8 -> float [N, 3, S, S] in [-1, 1] (the VQ's range)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_affine(images, *, max_shift: float = 0.08, scale: tuple[float, float] = (0.9, 1.1),
                  max_rotate: float = 0.15, generator=None):  # type: ignore[no-untyped-def]
    """Small random shifts, zooms and rotations of a batch [B, 3, S, S] in [-1, 1], border-padded."""
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    g = generator
    s = torch.empty(b).uniform_(*scale, generator=g)
    r = torch.empty(b).uniform_(-max_rotate, max_rotate, generator=g)
    t = torch.empty(b, 2).uniform_(-max_shift, max_shift, generator=g)
    cos, sin = torch.cos(r) / s, torch.sin(r) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
