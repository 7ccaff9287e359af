"""Codebook use from a histogram of indices: how many codes are used, and how evenly.

``usage`` = codes used at least once / codebook size (LlamaGen counts unique codes over a window the same way);
``entropy_bits`` = -sum p log2 p over the code frequencies p; ``perplexity`` = 2 ** entropy (the number of
equally likely codes with the same entropy: the codebook size at best, 1 when one code is always chosen).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def code_counts(indices: Any, vocab_size: int, counts: np.ndarray | None = None) -> np.ndarray:
    """Add the histogram of ``indices`` (any shape, array or tensor) to ``counts`` (int64 [vocab_size])."""
    flat = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise ValueError(f"indices lie in [{flat.min()}, {flat.max()}], outside a codebook of {vocab_size}")
    hist = np.bincount(flat, minlength=vocab_size)
    return hist if counts is None else counts + hist


def codebook_stats(counts: np.ndarray) -> dict[str, float | int]:
    """Usage, entropy and perplexity of a code histogram ``counts`` [vocab_size]."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    used = int((counts > 0).sum())
    if total == 0:
        return {"vocab_size": int(counts.size), "tokens": 0, "used": 0, "usage": 0.0, "entropy_bits": 0.0,
                "perplexity": 0.0}
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log2(p)).sum())
    return {"vocab_size": int(counts.size), "tokens": total, "used": used, "usage": used / counts.size,
            "entropy_bits": entropy, "perplexity": float(2.0**entropy)}
