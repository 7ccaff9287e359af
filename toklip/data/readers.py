"""More image-set layouts beside :mod:`toklip.data.sources` (WebDataset, CSV/TSV, captioned folders):
ImageNet-style class folders, JSONL files and plain image folders, plus :func:`open_images`, which recognises
every layout toklip reads.

They produce the same ``ListSource`` of ``RawSample``, so decoding, the decompression-bomb guard and skip
counting are one implementation for training and ``toklip tokenize``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toklip.core.errors import ConfigError
from toklip.data.sources import (
    CAPTION_COLUMNS,
    CAPTION_EXTS,
    IMAGE_COLUMNS,
    IMAGE_EXTS,
    DataError,
    ListSource,
    RawSample,
    Source,
    WebDatasetSource,
    csv_source,
    expand_shards,
    folder_source,
)

KINDS = ("auto", "webdataset", "csv", "jsonl", "class-folder", "folder", "images")


@dataclass
class LabeledSample(RawSample):
    """A raw sample with an integer class label (its class folder's index in the sorted class list)."""

    label: int = -1


@dataclass
class ImageSet:
    """An opened input: its source, the layout it was read as, and the class names when it has labels."""

    source: Source
    kind: str
    path: str
    classes: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_captions(self) -> bool:
        return self.kind in ("webdataset", "csv", "jsonl", "folder")


def _images_under(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_EXTS and p.is_file()]


def class_folder_source(root: str | Path) -> tuple[ListSource, list[str]]:
    """``root/<class>/<image>`` (torchvision ImageFolder layout): labels are indices into the sorted class names."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    samples: list[RawSample] = []
    for label, name in enumerate(classes):
        for p in _images_under(root / name):
            samples.append(LabeledSample(key=str(p.relative_to(root)), image=str(p), caption=None, label=label))
    if not samples:
        raise DataError(f"{root}: the {len(classes)} class folder(s) contain no images ({', '.join(IMAGE_EXTS)})")
    return ListSource(samples, f"class folders {root}"), classes


def image_folder_source(root: str | Path) -> ListSource:
    """Every image under ``root`` (recursively, sorted), without labels or captions."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    samples = [RawSample(key=str(p.relative_to(root)), image=str(p), caption=None) for p in _images_under(root)]
    if not samples:
        raise DataError(f"{root} contains no images ({', '.join(IMAGE_EXTS)})")
    return ListSource(samples, f"image folder {root}")


def jsonl_source(path: str | Path, *, image_key: str | None = None, caption_key: str | None = None) -> ListSource:
    """One JSON object per line with an image path (relative to the file) and a caption; blank lines ignored."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"JSONL file {str(path)!r} does not exist")
    samples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{line_no} is not valid JSON ({e.msg}); one object per line expected") from e
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{line_no} is a JSON {type(row).__name__}, not an object")
            img_col = image_key or next((c for c in IMAGE_COLUMNS if c in row), None)
            cap_col = caption_key or next((c for c in CAPTION_COLUMNS if c in row), None)
            if img_col is None or not isinstance(row.get(img_col), str):
                raise ConfigError(f"{path}:{line_no}: no image path (keys {sorted(row)}); name it one of "
                                  f"{list(IMAGE_COLUMNS)} or pass --image-key")
            img = row[img_col].strip()
            ref = img if "://" in img or Path(img).is_absolute() else str(path.parent / img)
            caption = row.get(cap_col) if cap_col else None
            samples.append(RawSample(key=f"{path.name}:{line_no}", image=ref, caption=caption))
    return ListSource(samples, f"JSONL {path}")


def detect_kind(path: Any) -> str:
    """The layout of ``path``: shards, a table, or one of the folder layouts."""
    if isinstance(path, (list, tuple)):
        return "webdataset"
    text = str(path)
    local = Path(text).expanduser()
    if ".tar" in text or "://" in text or text.startswith("pipe:") or "{" in text:
        return "webdataset"
    if local.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    if local.suffix.lower() == ".jsonl":
        return "jsonl"
    if not local.exists():
        raise DataError(f"input {text!r} does not exist")
    if not local.is_dir():
        raise ConfigError(f"cannot tell what {text!r} is: give WebDataset shards (.tar, a brace pattern, a URL), "
                          "a .csv/.tsv/.jsonl file or an image folder, or set the type explicitly")
    if any(local.glob("*.tar")):
        return "webdataset"
    images = _images_under(local)
    if any(p.with_suffix(e).is_file() for p in images[:1000] for e in CAPTION_EXTS):
        return "folder"
    top_level = [p for p in images if p.parent == local]
    if images and not top_level:
        return "class-folder"
    return "images"


def open_images(path: Any, kind: str = "auto", *, image_key: str | None = None, caption_key: str | None = None,
                separator: str | None = None) -> ImageSet:
    """Open ``path`` as ``kind`` (one of :data:`KINDS`; "auto" looks at it) with the training readers."""
    if kind not in KINDS:
        raise ConfigError(f"unknown input type {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = detect_kind(path)
    shown = str(path) if not isinstance(path, (list, tuple)) else "::".join(map(str, path))
    if kind == "webdataset":
        return ImageSet(WebDatasetSource(expand_shards(path), shuffle_buffer=0), kind, shown)
    if kind == "csv":
        return ImageSet(csv_source(path, image_key=image_key, caption_key=caption_key, separator=separator), kind,
                        shown)
    if kind == "jsonl":
        return ImageSet(jsonl_source(path, image_key=image_key, caption_key=caption_key), kind, shown)
    if kind == "class-folder":
        source, classes = class_folder_source(path)
        return ImageSet(source, kind, shown, classes=classes)
    if kind == "folder":
        return ImageSet(folder_source(path), kind, shown)
    return ImageSet(image_folder_source(path), kind, shown)
