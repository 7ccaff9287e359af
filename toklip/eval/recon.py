"""``toklip eval recon``: several VQ tokenizers on the same images, one table.

Images come through the tokenize readers and views (ADM centre crop, so numbers compare with LlamaGen's), each
VQ encodes and decodes them, and :mod:`toklip.metrics` measures PSNR and SSIM (8-bit, per image, averaged),
codebook usage / perplexity / entropy, and rFID / LPIPS when their weight files are given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from toklip.core.errors import ConfigError

COLUMNS = ("psnr_db", "ssim", "usage", "perplexity", "rfid", "lpips")


def load_images(path: str, size: int, limit: int | None) -> tuple[torch.Tensor, list[str], int]:
    """Up to ``limit`` readable images as [n, 3, S, S] in [-1, 1], their keys, and the number skipped."""
    import warnings

    from toklip.data.readers import open_images
    from toklip.tokenize.augment import make_views, to_model_range
    from toklip.tokenize.loader import SKIPPABLE

    source = open_images(path).source
    samples = getattr(source, "samples", None)
    if samples is None:
        from toklip.tokenize.loader import _tar_samples

        samples = (s for url in source.urls for s in _tar_samples(url))
    views, keys, skipped = [], [], 0
    for s in samples:
        if limit is not None and len(views) >= limit:
            break
        try:
            views.append(make_views(s.image, size)[0])
            keys.append(s.key)
        except SKIPPABLE as e:
            skipped += 1
            warnings.warn(f"skipped {s.key}: {e}", stacklevel=2)
    if not views:
        raise ConfigError(f"{path}: no readable image")
    return to_model_range(torch.stack(views)), keys, skipped


def recon_eval(images_path: str, specs: list[Any], *, image_size: int = 256, limit: int | None = None,
               batch_size: int = 32, device: str = "auto", precision: str = "fp32",
               inception_weights: str | None = None, lpips_weights: str | None = None,
               png: str | Path | None = None, examples: int = 4, fid_feature: Any = None) -> dict[str, Any]:
    from toklip.metrics.codebook import code_counts, codebook_stats
    from toklip.metrics.image import psnr, ssim, to_unit_range
    from toklip.metrics.perceptual import FIDMetric, LPIPSMetric, MetricUnavailable
    from toklip.tokenize.encode import build_tokenizer

    images, keys, skipped = load_images(images_path, image_size, limit)
    rows, recon_examples, notes = [], [], {}
    for spec in specs:
        tok = build_tokenizer(spec, device=device, image_size=None if spec.source == "model" else image_size,
                              precision=precision)
        if tok.image_size != image_size:
            raise ConfigError(f"{spec.name} takes {tok.image_size} px; pass --image-size {tok.image_size}")
        fid = lpips = None
        try:
            fid = FIDMetric(inception_weights, feature=fid_feature)
        except MetricUnavailable as e:
            notes["rfid"] = str(e)
        try:
            lpips = LPIPSMetric(lpips_weights)
        except MetricUnavailable as e:
            notes["lpips"] = str(e)
        counts = np.zeros(tok.vocab_size, dtype=np.int64)
        p_all, s_all, first = [], [], None
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            indices = tok.indices(x)
            y = tok.decode(indices).cpu()
            counts = code_counts(indices, tok.vocab_size, counts)
            a, b = to_unit_range(y), to_unit_range(x)
            p_all.append(psnr(a, b))
            s_all.append(ssim(a, b))
            if fid is not None:
                fid.update(b, a)
            if lpips is not None:
                lpips.update(y, x)
            if first is None:
                first = y[:examples]
        stats = codebook_stats(counts)
        rows.append({"vq": spec.name, "weights": spec.weights or f"random (seed {spec.seed})",
                     "weights_sha256": tok.weights_sha256, "psnr_db": float(torch.cat(p_all).mean()),
                     "ssim": float(torch.cat(s_all).mean()), "usage": stats["usage"], "used": stats["used"],
                     "vocab_size": stats["vocab_size"], "perplexity": stats["perplexity"],
                     "entropy_bits": stats["entropy_bits"],
                     "rfid": fid.compute() if fid is not None and len(images) > 1 else None,
                     "rfid_evaluator": fid.evaluator if fid is not None else None,
                     "lpips": lpips.compute() if lpips is not None else None})
        recon_examples.append(first)
    result = {"images": len(images), "skipped": skipped, "image_size": image_size,
              "resize": "ADM centre crop (LlamaGen)", "rfid_reference": "the same images (reconstruction FID)",
              "rows": rows, "notes": notes}
    if png is not None:
        result["png"] = str(_examples_png(images[:examples], recon_examples, Path(png)))
    return result


def format_table(result: dict[str, Any]) -> str:
    header = ["vq", "PSNR dB", "SSIM", "codes used", "perplexity", "rFID", "LPIPS"]
    lines = []
    for r in result["rows"]:
        lines.append([r["vq"], f"{r['psnr_db']:.2f}", f"{r['ssim']:.4f}",
                      f"{r['used']}/{r['vocab_size']} ({r['usage']:.1%})", f"{r['perplexity']:.1f}",
                      "-" if r["rfid"] is None else f"{r['rfid']:.2f}", "-" if r["lpips"] is None else f"{r['lpips']:.4f}"])
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *lines]]
    text.append(f"{result['images']} images at {result['image_size']} px ({result['resize']}), {result['skipped']} skipped")
    text += [f"{k}: {v}" for k, v in result["notes"].items()]
    return "\n".join(text)


def _examples_png(originals: torch.Tensor, recons: list[torch.Tensor], path: Path) -> Path:
    """One row per example image: the original, then each tokenizer's reconstruction."""
    from toklip.data.preprocess import image_grid

    rows = torch.stack([originals, *recons], dim=1).reshape(-1, *originals.shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, 1 + len(recons)).save(path)
    return path
