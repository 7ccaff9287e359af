"""Zero-shot classification as open_clip runs it: per class, the mean of the normalised text embeddings of
every template, re-normalised; logits = 100 * image_features @ classifier; top-1/top-5 over all samples.

Data: an ImageNet-layout folder (one sub-folder per class, sorted, like torchvision's ImageFolder). Class
names: OpenAI's 1000 ImageNet names when the folder has 1000 WordNet-id sub-folders (n01440764, ...), else
the folder names (underscores -> spaces), or a file (one name per line, a JSON list, a JSON {folder: name}
map, or ImageNet's ``imagenet_class_index.json``).
Templates: OpenAI's 80 ImageNet templates, or a file of ``{}`` templates, or given strings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import ConfigError
from toklip.eval.common import check_model_has_text, encode_images, image_loader, read_lines_or_json
from toklip.data.sources import IMAGE_EXTS

_WNID = re.compile(r"n\d{8}")


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def openai_templates() -> list[Callable[[str], str]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def scan_folder(root: str | Path) -> tuple[list[str], list[Path], list[int]]:
    """-> (sorted class folder names, image paths, labels)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{root} has no class sub-folders (expected ImageNet layout: root/<class>/<image>)")
    paths, labels = [], []
    for label, c in enumerate(classes):
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                paths.append(p)
                labels.append(label)
    if not paths:
        raise ConfigError(f"{root}: the class folders contain no images")
    return classes, paths, labels


def resolve_classnames(folders: Sequence[str],
                       classnames: str | Path | Sequence[str] | Mapping[str, str] | None) -> list[str]:
    if classnames is None:
        if len(folders) == 1000 and all(_WNID.fullmatch(f) for f in folders):
            return imagenet_classnames()  # sorted WordNet ids are the order OpenAI's names follow
        return [f.replace("_", " ") for f in folders]
    if isinstance(classnames, (str, Path)):
        classnames = read_lines_or_json(classnames, "class names")
    if isinstance(classnames, Mapping) and classnames and all(
            isinstance(v, (list, tuple)) and len(v) == 2 for v in classnames.values()):
        classnames = {str(v[0]): str(v[1]) for v in classnames.values()}  # imagenet_class_index.json layout
    if isinstance(classnames, Mapping):
        missing = [f for f in folders if f not in classnames]
        if missing:
            raise ConfigError(f"the class-name map has no entry for folder(s) {missing[:5]}")
        return [str(classnames[f]) for f in folders]
    if isinstance(classnames, str) or not isinstance(classnames, Sequence):
        raise ConfigError("class names must be a list, a file of one name per line, or a JSON list or {folder: name} "
                          f"map, got {type(classnames).__name__}")
    names = [str(c) for c in classnames]
    if len(names) != len(folders):
        raise ConfigError(f"{len(names)} class names for {len(folders)} class folders; they must match one to one")
    return names


def resolve_templates(templates: str | Path | Sequence[str] | None) -> list[Any]:
    if templates is None:
        return openai_templates()
    if isinstance(templates, Path) or (isinstance(templates, str) and "{}" not in templates):
        templates = read_lines_or_json(templates, "templates")  # a file (a clear error when it is missing)
    if isinstance(templates, str):
        templates = [templates]
    if isinstance(templates, Mapping):
        raise ConfigError("templates must be a list of strings containing '{}', not a JSON object")
    out = list(templates)
    bad = [t for t in out if not callable(t) and not _one_slot(t)]
    if not out or bad:
        raise ConfigError(f"templates must be strings with one '{{}}' for the class name, got {bad[:3] or out}")
    return out


def _one_slot(t: Any) -> bool:
    if not isinstance(t, str) or "{}" not in t:
        return False
    try:
        t.format("x")
    except (IndexError, KeyError, ValueError):
        return False
    return True


@torch.no_grad()
def build_classifier(model: Any, classnames: Sequence[str], templates: Sequence[Any], *,
                     progress: bool = False) -> Tensor:
    """[E, C] zero-shot weights (open_clip's ``build_zero_shot_classifier`` with the model's tokenizer)."""
    from open_clip import build_zero_shot_classifier

    check_model_has_text(model)
    fns = [t.format if isinstance(t, str) else t for t in templates]  # open_clip assumes all str or all callable
    return build_zero_shot_classifier(model, model.tokenizer, list(classnames), fns,
                                      num_classes_per_batch=10, device=model.device, use_tqdm=progress).float()


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose label is among the k highest logits (k capped at the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        out[k] = int(hit.sum()) / len(labels) if len(labels) else 0.0
    return out


def zero_shot(
    model: Any,
    folder: str | Path,
    *,
    classnames: Any = None,
    templates: Any = None,
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 on an ImageNet-layout folder. Unreadable images are skipped and counted."""
    t0 = time.perf_counter()
    folders, paths, labels = scan_folder(folder)
    names = resolve_classnames(folders, classnames)
    temps = resolve_templates(templates)
    weights = build_classifier(model, names, temps, progress=progress)
    idx, feats = encode_images(model, image_loader(paths, model, batch_size, workers), progress=progress,
                               desc="zero-shot")
    y = torch.tensor(labels)[idx]
    acc = topk_accuracy(100.0 * feats @ weights.cpu(), y)
    return {
        "task": "zero-shot classification",
        "data": str(folder),
        "classes": len(names),
        "templates": len(temps),
        "images": len(paths),
        "evaluated": int(len(idx)),
        "skipped": int(len(paths) - len(idx)),
        "top1": acc[1],
        "top5": acc[5],
        "seconds": round(time.perf_counter() - t0, 2),
    }
