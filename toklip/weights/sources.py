"""What a model source names, decided once: a preset, a saved folder, a hub repo, a config file or a
checkpoint file (official TokLIP release or toklip safetensors). Resolution ends in local files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toklip.core.errors import ConfigError, WeightsNotFoundError
from toklip.weights.hub import hub_file, is_hub_repo_id

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

SourceKind = Literal["preset", "folder", "config", "checkpoint"]


@dataclass(frozen=True)
class Source:
    """A resolved model source: ``config`` is a preset name or a local JSON file (None: infer from the
    weights), ``weights`` a local checkpoint file (None: random init)."""

    kind: SourceKind
    config: str | Path | None
    weights: Path | None


def saved_files(folder_or_repo: str | Path, *, revision: str | None = None) -> Source:
    """The config.json + model.safetensors of a ``save_pretrained`` folder or hub repo (downloaded to the HF
    cache, nothing else from the repo)."""
    local = Path(folder_or_repo).expanduser()
    if local.is_dir():
        files = [local / CONFIG_NAME, local / WEIGHTS_NAME]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsNotFoundError(
                f"{local} has no {' or '.join(missing)}; save_pretrained() writes {WEIGHTS_NAME} + {CONFIG_NAME}"
            )
        return Source("folder", files[0], files[1])
    if not is_hub_repo_id(str(folder_or_repo)):
        raise WeightsNotFoundError(
            f"{str(folder_or_repo)!r} is neither a folder written by save_pretrained() nor a hub repo id ('owner/name')"
        )
    repo = str(folder_or_repo)
    config = hub_file(repo, CONFIG_NAME, revision=revision, what="TokLIP " + CONFIG_NAME)
    weights = hub_file(repo, WEIGHTS_NAME, revision=revision, what="TokLIP " + WEIGHTS_NAME)
    return Source("folder", config, weights)


def resolve_source(source: str | Path, *, revision: str | None = None) -> Source:
    """Classify ``source``. Local paths win over hub ids; a name that is neither is looked up as a preset."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return saved_files(path)
    if path.is_file():
        if path.suffix == ".json":
            return Source("config", path, None)
        return Source("checkpoint", None, path)
    if is_hub_repo_id(text):
        return saved_files(text, revision=revision)
    if path.suffix or "/" in text or "\\" in text:
        raise ConfigError(
            f"{text!r} does not exist (expected a preset name, a config.json, a save_pretrained folder or hub repo "
            "id 'owner/name', an official TokLIP release file or a safetensors file)"
        )
    return Source("preset", text, None)
