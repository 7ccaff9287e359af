"""Image-text retrieval on a Karpathy-style captions file (COCO/Flickr 5k/1k test layouts).

Accepted files: the ALBEF/UNITER list ``[{"image": "val2014/x.jpg", "caption": [..5..]}, ...]``; the
official TokLIP ``coco_test.json`` (JSON lines, one ``{"filename": "COCO_val2014_x.jpg", "caption": [..5..]}``
per line); or Karpathy's ``dataset_coco.json`` (``{"images": [{"filepath", "filename", "split",
"sentences": [{"raw"}]}]}``, filtered to ``split``). Recall@k counts each query once:
for image->text the best-ranked of the image's captions, for text->image the rank of the caption's image.
(For text->image the official script compares both columns of a ``[hits, 2]`` ``nonzero()`` result with k,
so a caption among the first k rows counts once more whatever its rank, which inflates IR@k slightly and can
exceed 1 on tiny sets; this does not.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.core.errors import ConfigError
from toklip.eval.common import check_model_has_text, encode_images, encode_texts, image_loader

KS = (1, 5, 10)


def _load_json_or_lines(p: Path) -> Any:
    """A JSON document, or JSON lines (one object per line, as the official ``coco_test.json``)."""
    text = p.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) < 2:
            raise ConfigError(f"{p} is not valid JSON: {e}") from e
        out = []
        for n, ln in enumerate(lines, 1):
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError as e2:
                raise ConfigError(f"{p} is neither JSON nor JSON lines: line {n}: {e2}") from e2
        return out


def read_captions(path: str | Path, *, split: str = "test") -> list[tuple[str, list[str]]]:
    """-> [(relative image path, [captions])]."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"captions file {str(p)!r} does not exist")
    data = _load_json_or_lines(p)
    items: list[tuple[str, list[str]]] = []
    if isinstance(data, dict) and "images" in data:
        if not isinstance(data["images"], list):
            raise ConfigError(f"{p}: 'images' must be a list of Karpathy image entries")
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "filename" not in im or not isinstance(im.get("sentences", []), list):
                raise ConfigError(f"{p}: images[{i}] needs 'filename' and a 'sentences' list, got {im!r:.100}")
            if split and im.get("split") != split:
                continue
            rel = str(Path(im.get("filepath") or "") / im["filename"])
            caps = [s["raw"] if isinstance(s, dict) and "raw" in s else str(s) for s in im.get("sentences", [])]
            items.append((rel, caps))
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            key = "image" if isinstance(entry, dict) and "image" in entry else "filename"
            if not isinstance(entry, dict) or key not in entry or "caption" not in entry:
                raise ConfigError(f"{p}: entry {i} needs 'image' (or 'filename') and 'caption' keys, got "
                                  f"{entry!r:.100}")
            caps = entry["caption"]
            if not isinstance(caps, (str, list)):
                raise ConfigError(f"{p}: entry {i}: 'caption' must be a string or a list of strings")
            items.append((str(entry[key]), [caps] if isinstance(caps, str) else [str(c) for c in caps]))
    else:
        raise ConfigError(f"{p}: expected a list of {{image, caption}}, JSON lines of {{filename, caption}}, or a "
                          "Karpathy {'images': [...]} file")
    items = [(im, [c for c in caps if c.strip()]) for im, caps in items]
    empty = [im for im, caps in items if not caps]
    if empty:
        raise ConfigError(f"{p}: {len(empty)} image(s) have no caption, e.g. {empty[0]}")
    if not items:
        raise ConfigError(f"{p} lists no images" + (f" in split {split!r}" if split else ""))
    return items


def retrieval_metrics(image_features: Tensor, text_features: Tensor, txt2img: Sequence[int] | Tensor,
                      ks: Sequence[int] = KS, chunk: int = 1024) -> dict[str, float]:
    """Recall@k both ways from l2-normalised features; ``txt2img[j]`` is the image of caption j.

    A caption's rank is the number of images scored strictly higher than its own image; an image's rank is the
    smallest such count over its captions. R@k = fraction of queries with rank < k."""
    t2i = torch.as_tensor(txt2img, dtype=torch.long)
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    if t2i.shape[0] != n_txt or (n_txt and (int(t2i.min()) < 0 or int(t2i.max()) >= n_img)):
        raise ConfigError("txt2img must give an image index in range for every caption")
    img_rank = torch.full((n_img,), n_txt, dtype=torch.long)
    txt_rank = torch.empty(n_txt, dtype=torch.long)
    for s in range(0, n_txt, chunk):  # text -> image
        sims = text_features[s : s + chunk] @ image_features.T  # [c, I]
        own = sims.gather(1, t2i[s : s + chunk, None])
        txt_rank[s : s + chunk] = (sims > own).sum(1)
    ichunk = max(1, chunk // 4)
    for s in range(0, n_img, ichunk):  # image -> text
        sims = image_features[s : s + ichunk] @ text_features.T  # [c, T]
        cols = torch.nonzero((t2i >= s) & (t2i < s + ichunk), as_tuple=False)[:, 0]  # this chunk's captions
        rows = t2i[cols] - s
        own = sims[rows, cols]
        rank = (sims[rows] > own[:, None]).sum(1)  # each caption's rank in its image's list
        img_rank[s : s + ichunk] = torch.full((sims.shape[0],), n_txt, dtype=torch.long).scatter_reduce(
            0, rows, rank, reduce="amin")
    out: dict[str, float] = {}
    for k in ks:  # exact fractions (a float32 mean is off in the 8th digit)
        out[f"image_to_text_R@{k}"] = int((img_rank < k).sum()) / n_img if n_img else 0.0
    for k in ks:
        out[f"text_to_image_R@{k}"] = int((txt_rank < k).sum()) / n_txt if n_txt else 0.0
    tr = [out[f"image_to_text_R@{k}"] for k in ks]
    ir = [out[f"text_to_image_R@{k}"] for k in ks]
    out["image_to_text_mean"] = sum(tr) / len(tr)
    out["text_to_image_mean"] = sum(ir) / len(ir)
    out["mean"] = (out["image_to_text_mean"] + out["text_to_image_mean"]) / 2
    return out


def retrieval(
    model: Any,
    captions: str | Path,
    images_root: str | Path | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every image and caption, then recall@1/5/10 both ways. Unreadable images are left out with their
    captions (and counted)."""
    t0 = time.perf_counter()
    check_model_has_text(model)
    items = read_captions(captions, split=split)
    root = Path(images_root).expanduser() if images_root else Path(captions).expanduser().parent
    paths = [root / im for im, _ in items]
    idx, img_feats = encode_images(model, image_loader(paths, model, batch_size, workers), progress=progress,
                                   desc="retrieval images")
    kept = idx.tolist()
    texts, t2i = [], []
    for new_i, old_i in enumerate(kept):
        for c in items[old_i][1]:
            texts.append(c)
            t2i.append(new_i)
    txt_feats = encode_texts(model, texts, batch_size=batch_size, progress=progress, desc="retrieval texts")
    metrics = retrieval_metrics(img_feats, txt_feats, t2i)
    return {
        "task": "image-text retrieval",
        "data": str(captions),
        "images": len(items),
        "evaluated_images": len(kept),
        "skipped": len(items) - len(kept),
        "captions": len(texts),
        **metrics,
        "seconds": round(time.perf_counter() - t0, 2),
    }
