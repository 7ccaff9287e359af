"""``verify`` (decode stored tokens next to their original images, and refuse a VQ whose weights differ from the
ones that made the tokens) and ``stats`` (codebook usage, perplexity, entropy, a usage histogram)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toklip.core.errors import ConfigError
from toklip.data.token_dataset import TokenDataset


class VQMismatchError(ConfigError):
    """The VQ given to decode is not the one whose weights made the tokens (t2i vs c2i, another checkpoint)."""


def manifest_spec(manifest: dict[str, Any]) -> Any:
    from toklip.tokenize.encode import TokenizerSpec

    t = manifest["tokenizer"]
    return TokenizerSpec(t["source"], t["name"], t.get("weights"), dict(t.get("args") or {}), int(t.get("seed", 0)),
                         bool(t.get("random_weights", False)))


def check_same_vq(manifest: dict[str, Any], tok: Any) -> None:
    made = manifest["tokenizer"]
    expected = made["weights_sha256"]
    if tok.weights_sha256 != expected:
        given = tok.spec.weights or f"random, seed {tok.spec.seed}"
        original = made.get("weights") or f"random, seed {made.get('seed', 0)}"
        raise VQMismatchError(
            f"the VQ given ({tok.spec.name}, weights {given}) has weights sha256 {tok.weights_sha256[:16]}..., but "
            f"the tokens were made with {made['name']} (weights {original}, sha256 {expected[:16]}...); decoding "
            "them with another VQ (t2i vs c2i is the classic case) gives garbage")


def find_original(manifest: dict[str, Any], shard: int, key: str) -> Any:
    """The raw image of sample ``key`` in shard ``shard``, read again from the recorded input."""
    from toklip.data.readers import open_images
    from toklip.tokenize.loader import _tar_samples
    from toklip.tokenize.plan import plan_jobs

    inputs = manifest["inputs"]
    images = open_images(inputs["path"], inputs["type"])
    jobs = plan_jobs(images.source, manifest.get("shard_size") or 1)
    job = jobs[shard]
    samples = job.samples if job.url is None else _tar_samples(job.url)
    for s in samples:
        if s.key == key:
            return s.image
    raise ConfigError(f"sample {key!r} is no longer in the input {inputs['path']}")


def verify(out: str | Path, *, n: int = 16, spec: Any = None, device: str = "auto", seed: int = 0,
           grid_path: str | Path | None = None) -> dict[str, Any]:
    """Decode ``n`` random stored samples (view 0), write ``original | reconstruction`` rows to a PNG, re-encode the
    originals and count how many stored indices they reproduce. Raises VQMismatchError for a different VQ."""

    from toklip.metrics.image import mean_psnr
    from toklip.data.preprocess import image_grid
    from toklip.tokenize.augment import make_views, to_model_range
    from toklip.tokenize.encode import build_tokenizer

    ds = TokenDataset(out, view=0)
    m = ds.manifest
    encoder = m["precision"]["encoder"]
    precision = "bf16" if encoder.startswith("bf16") else "winograd" if "Winograd" in encoder else "fp32"
    tok = build_tokenizer(spec or manifest_spec(m), device=device,
                          image_size=None if (spec or manifest_spec(m)).source == "model" else m["image_size"],
                          precision=precision)
    check_same_vq(m, tok)
    chosen = sorted(random.Random(seed).sample(range(len(ds)), min(n, len(ds))))
    if not chosen:
        raise ConfigError(f"{out} holds no images to verify")
    aug = m["augment"]
    originals, stored = [], []
    for i in chosen:
        s, row = ds.locate(i)
        raw = find_original(m, int(ds.shards[s]["shard"]), ds.key(i))
        views = make_views(raw, m["image_size"], aug["name"], crop_range=aug.get("crop_range") or 1.1,
                           resize=aug["resize"])
        originals.append(to_model_range(views[:1]))
        stored.append(ds[i]["indices"])
    images = torch.cat(originals)
    indices = torch.stack(stored)
    recon = tok.decode(indices).cpu()
    reencoded = tok.indices(images).cpu()
    match = float((reencoded == indices).float().mean())
    quality = mean_psnr(recon, images)
    path = Path(grid_path) if grid_path else Path(out) / "verify.png"
    pairs = torch.stack([images, recon], dim=1).reshape(-1, *images.shape[1:])  # original | reconstruction
    image_grid(pairs, 2 * min(4, len(chosen))).save(path)
    return {"samples": len(chosen), "reencoded_index_match": match, "psnr_db": quality,
            "weights_sha256": tok.weights_sha256, "grid": str(path)}


def stats(out: str | Path, *, png: str | Path | None = None) -> dict[str, Any]:
    """Codebook statistics over every stored index (all views), and a usage histogram PNG."""
    from toklip.metrics.codebook import code_counts, codebook_stats

    ds = TokenDataset(out)
    counts = np.zeros(ds.vocab_size, dtype=np.int64)
    for s in range(len(ds.shards)):
        counts = code_counts(ds.array(s), ds.vocab_size, counts)
    result: dict[str, Any] = {"images": len(ds), "views": ds.num_views, **codebook_stats(counts)}
    top = np.argsort(-counts)[:10]
    result["most_used"] = [[int(c), int(counts[c])] for c in top if counts[c] > 0]
    path = Path(png) if png else Path(out) / "code_usage.png"
    _histogram(counts, path, f"{ds.manifest['tokenizer']['name']}: {result['used']}/{ds.vocab_size} codes used, "
                             f"perplexity {result['perplexity']:.1f}")
    result["histogram"] = str(path)
    return result


def _histogram(counts: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.bar(np.arange(counts.size), counts, width=1.0)
    a.set(xlabel="code index", ylabel="count", title="usage by code")
    ranked = np.sort(counts)[::-1]
    b.semilogy(np.arange(1, counts.size + 1), np.maximum(ranked, 0.5))
    b.set(xlabel="rank", ylabel="count (log)", title="rank-frequency")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
