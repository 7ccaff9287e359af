"""What ``--features`` asks for, and the size check that keeps per-token features from filling a disk by accident.

Indices cost ``2 * views * N`` bytes per image; the pooled embedding ``2 * views * D``; per-token features
``2 * views * N * D`` (fp16): for ImageNet with ten-crop, 256 tokens and D = 768 that is 5 TB. So ``tokens`` is
written only on explicit request, after the estimate is printed, and only with ``--yes`` or under ``--max-bytes``;
a run whose estimate exceeds the free space of the output disk is refused either way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from toklip.core.errors import ConfigError

FEATURE_KINDS = ("pooled", "tokens")
FP16_BYTES = 2


def parse_features(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"none"``, ``"pooled"``, ``"tokens"`` or ``"pooled,tokens"`` -> the sorted kinds (``()`` for none)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    kinds = {k.strip() for k in items if k.strip() and k.strip() != "none"}
    unknown = sorted(kinds - set(FEATURE_KINDS))
    if unknown:
        raise ConfigError(f"--features {','.join(unknown)} is not one of none, pooled, tokens (or pooled,tokens)")
    return tuple(k for k in FEATURE_KINDS if k in kinds)


@dataclass(frozen=True)
class SizeEstimate:
    """Bytes the output will take per image and in all (``images`` is None when the input's size is unknown,
    e.g. WebDataset shards)."""

    images: int | None
    views: int
    tokens: int
    index_bytes: int
    kinds: tuple[str, ...] = ()
    pooled_dim: int = 0
    token_dim: int = 0

    @property
    def token_feature_bytes_per_image(self) -> int:
        return self.views * self.tokens * self.token_dim * FP16_BYTES if "tokens" in self.kinds else 0

    @property
    def per_image(self) -> int:
        pooled = self.views * self.pooled_dim * FP16_BYTES if "pooled" in self.kinds else 0
        return self.views * self.tokens * self.index_bytes + pooled + self.token_feature_bytes_per_image

    @property
    def total(self) -> int | None:
        return None if self.images is None else self.images * self.per_image

    @property
    def token_features_total(self) -> int | None:
        return None if self.images is None else self.images * self.token_feature_bytes_per_image

    def describe(self) -> str:
        n = "? (unknown until read)" if self.images is None else f"{self.images:,}"
        text = f"output estimate: {human(self.per_image)} per image"
        if "tokens" in self.kinds:
            total = "?" if self.token_features_total is None else human(self.token_features_total)
            text += (f"; per-token features: {n} images x {self.views} views x {self.tokens} tokens x {self.token_dim} "
                     f"dims x {FP16_BYTES} bytes (fp16) = {total}")
        if self.total is not None:
            text += f"; {human(self.total)} in all"
        return text


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_budget(est: SizeEstimate, *, max_bytes: int | None, confirmed: bool, out: Path,
                 pending_images: int | None) -> None:
    """Refuse a run whose output could exceed ``--max-bytes``, per-token features without ``--yes`` or
    ``--max-bytes``, and any run whose pending output exceeds the free space of the disk holding ``out``."""
    if max_bytes is not None and max_bytes < 0:
        raise ConfigError(f"--max-bytes must be >= 0, got {max_bytes}")
    if "tokens" in est.kinds and not confirmed and max_bytes is None:
        total = "an unknown amount" if est.token_features_total is None else human(est.token_features_total)
        raise ConfigError(f"--features tokens writes {total} of per-token features ({est.describe()}); pass --yes "
                          "to write them, or --max-bytes BYTES to write them only while the output stays under a bound")
    if max_bytes is not None and est.total is not None and est.total > max_bytes:
        raise ConfigError(f"the output would take {human(est.total)} ({est.describe()}), more than --max-bytes "
                          f"{human(max_bytes)}; raise the bound, or drop --features tokens / use fewer views")
    if pending_images is not None:
        need = pending_images * est.per_image
        root = next((p for p in [out, *out.parents] if p.exists()), Path("."))
        free = shutil.disk_usage(root).free
        if need > free:
            raise ConfigError(f"the output needs {human(need)} but {root} has {human(free)} free "
                              f"({est.describe()}); free space or choose another OUT")


def check_running_total(written: int, max_bytes: int | None) -> None:
    """For inputs of unknown size: stop before the shards this process writes in this run pass ``--max-bytes``
    (``written`` counts the next shard too; finished shards stay valid, and a rerun continues after them)."""
    if max_bytes is not None and written > max_bytes:
        raise ConfigError(f"with the next shard this run would have written {human(written)}, over --max-bytes "
                          f"{human(max_bytes)}; the shards written so far are complete: rerun (with a larger "
                          "--max-bytes) to continue")
