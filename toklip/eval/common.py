"""What both evaluations share: loading the model to evaluate, decoding images safely, writing results."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from toklip.core.errors import ConfigError, InputError


def load_model(model: str, *, weights: str | None = None, config: str | None = None,
               device: str | None = None) -> Any:
    """What ``toklip serve --model`` takes (a preset with optional ``weights``, a config.json, a save_pretrained
    folder, a checkpoint file, see :func:`toklip.model.loading.load_model`), plus a training run's out_dir (its newest
    checkpoint) and an official file of any size with its ``config`` (the fixture format)."""
    from toklip.model.loading import load_model as load_for_inference

    from toklip.train.checkpoint import run_checkpoint

    model = str(run_checkpoint(model, marker="config.json"))  # a training run's out_dir: its newest checkpoint
    return load_for_inference(model, weights=weights, config=config, device=device or "auto", dtype="float32")


class ImageList(Dataset):
    """Images by path, preprocessed with the model's transform; unreadable ones come back as None."""

    def __init__(self, paths: Sequence[str | Path], size: int, resize_mode: str = "shortest") -> None:
        self.paths, self.size, self.resize_mode = list(paths), size, resize_mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None]:
        from toklip.data.preprocess import preprocess

        try:
            return i, preprocess(self.paths[i], self.size, resize_mode=self.resize_mode)
        except InputError as e:
            warnings.warn(f"skipping {self.paths[i]}: {e}", stacklevel=2)
            return i, None


def _collate(items: list[tuple[int, Tensor | None]]) -> tuple[Tensor, Tensor | None]:
    good = [(i, t) for i, t in items if t is not None]
    idx = torch.tensor([i for i, _ in good], dtype=torch.long)
    return idx, (torch.stack([t for _, t in good]) if good else None)


def image_loader(paths: Sequence[str | Path], model: Any, batch_size: int, workers: int) -> DataLoader:
    ds = ImageList(paths, model.image_size, model.config.resize_mode)
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate, shuffle=False)


@torch.no_grad()
def encode_images(model: Any, loader: DataLoader, *, progress: bool = True,
                  desc: str = "images") -> tuple[Tensor, Tensor]:
    """-> (indices of the readable images, their l2-normalised embeddings [n, E] in fp32 on CPU)."""
    from tqdm.auto import tqdm

    idxs, feats = [], []
    for idx, images in tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        if images is None:
            continue
        f = model.encode_image(images.to(model.device), normalize=True)
        idxs.append(idx)
        feats.append(f.float().cpu())
    if not feats:
        raise InputError("no image could be read")
    return torch.cat(idxs), torch.cat(feats)


@torch.no_grad()
def encode_texts(model: Any, texts: Sequence[str], *, batch_size: int = 256, progress: bool = True,
                 desc: str = "texts") -> Tensor:
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress,
                  dynamic_ncols=True):
        out.append(model.encode_text(list(texts[i : i + batch_size]), normalize=True).float().cpu())
    return torch.cat(out)


def write_results(path: str | Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    from toklip.core.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(results, indent=2) + "\n")


def check_model_has_text(model: Any) -> None:
    if model.text is None or model.tokenizer is None:
        raise ConfigError("this model has no text tower or tokenizer: zero-shot and retrieval need one")


def read_lines_or_json(path: str | Path, what: str) -> Any:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from e
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
