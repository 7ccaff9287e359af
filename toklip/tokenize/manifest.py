"""``settings.json`` (what every shard must agree on) and ``manifest.json`` (merged from the shard records once every
shard is finished), both written atomically.

The settings fingerprint covers everything that decides a shard's bytes: the inputs (a digest of every shard's
keys), the tokenizer and its weights' sha256, image size, augmentation, precision, output dtype, features and
shard size. A rerun with other settings into the same folder is refused instead of mixing two tokenizations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from toklip.core.errors import ConfigError
from toklip.core.io import atomic_write_text

FORMAT = "toklip-tokens"
FORMAT_VERSION = 1
SETTINGS = "settings.json"
MANIFEST = "manifest.json"


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def claim_folder(out: Path, settings: dict[str, Any]) -> str:
    """Write ``settings.json`` or check that the one there matches; -> the fingerprint. Ranks may race here: they
    all write the same bytes."""
    fp = fingerprint(settings)
    path = out / SETTINGS
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is unreadable ({e}); move the folder away or pick another OUT") from e
        if existing.get("fingerprint") != fp:
            diff = sorted(k for k in set(settings) | set(existing.get("settings", {}))
                          if settings.get(k) != existing.get("settings", {}).get(k))
            raise ConfigError(f"{out} holds tokens made with other settings (differing: {', '.join(diff)}); "
                              "pick another output folder, or rerun with the same settings to resume")
        return fp
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"fingerprint": fp, "settings": settings}, indent=2) + "\n")
    return fp


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is {path.parent} a `toklip tokenize` output folder?")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{what} {path} is not a JSON object")
    return value


def build_manifest(settings: dict[str, Any], records: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """The merged manifest: settings, counts, shards (file, count, sha256) and every skipped sample."""
    records = sorted(records, key=lambda r: r["shard"])
    shards, skipped = [], []
    for r in records:
        entry = {"shard": r["shard"], "count": r["count"], "read": r["read"], "skipped": len(r["skipped"])}
        entry.update({f"{what}_file": f"shards/{info['file']}" for what, info in r["files"].items()})
        entry.update({f"{what}_sha256": info["sha256"] for what, info in r["files"].items()})
        shards.append(entry)
        skipped.extend({"shard": r["shard"], **s} for s in r["skipped"])
    images = sum(r["count"] for r in records)
    n_aug = settings["augment"]["variants"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, **extra, **settings,
        "counts": {"images": images, "skipped": len(skipped), "read": sum(r["read"] for r in records),
                   "shards": len(records), "sequences": images * n_aug},
        "shards": shards, "skipped_samples": skipped,
    }


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    return atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
