"""Where weights come from: a local path, or a file in a Hugging Face hub repo (cached in the standard HF cache).

Offline (``HF_HUB_OFFLINE=1``) or unreachable hub and nothing cached -> one WeightsNotFoundError naming the repo,
the file and the local-path alternative.
"""

from __future__ import annotations

import re
from pathlib import Path

from toklip.core.errors import CheckpointError, ConfigError, WeightsNotFoundError
from toklip.core.registry import ComponentSpec, Weights


def hub_file(repo_id: str, filename: str, *, revision: str | None = None, what: str = "weights") -> Path:
    """Download (or find in the HF cache) one file of a hub repo."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a core dependency
        raise WeightsNotFoundError("huggingface_hub is needed to fetch weights: pip install huggingface_hub") from e
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as e:  # noqa: BLE001 - offline, 404, auth and network errors all mean "not available"
        raise WeightsNotFoundError(
            f"could not get {what} {filename!r} from the Hugging Face hub repo {repo_id!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).\n"
            f"  Download it where you have network (huggingface-cli download {repo_id} {filename}) and pass the "
            "local file instead: pretrained='/path/to/" + filename + "'"
        ) from e


REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_repo_id(text: str) -> bool:
    """The one rule for "is this a hub repo id": ``owner/name`` with no such local path, no file suffix
    such as ``.pt``, and no URL scheme (URLs are never fetched)."""
    return bool(REPO_ID.match(text)) and not Path(text).expanduser().exists() and Path(text).suffix == ""


def hub_model_folder(source: str | Path, *, what: str, option: str, contents: str, patterns: list[str]) -> Path:
    """A transformers model folder: a local folder as is; a hub repo id ("owner/name") -> its snapshot folder in
    the HF cache, downloading only the files matching ``patterns`` (never pickles or code) when online. ``what``
    ("language model") and ``option`` ("llm") name the thing in errors; ``contents`` says what the folder holds."""
    if not isinstance(source, (str, Path)) or not str(source):
        raise ConfigError(f"{option} must be a local folder or a hub repo id ('owner/name'), got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"{option}={str(source)!r} is a file; give the folder of a transformers {what} ({contents})")
    if not is_hub_repo_id(str(source)):
        raise ConfigError(f"{option}={str(source)!r} is neither an existing folder nor a hub repo id ('owner/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(source), allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, 404, auth and network errors all mean "not available"
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsNotFoundError(
            f"could not get the {what} {str(source)!r} from the Hugging Face hub and it is not in the local "
            f"cache ({type(e).__name__}: {first}).\n  Download it where you have network "
            f"(huggingface-cli download {source} --include '*.json' '*.safetensors' 'tokenizer*') and pass the "
            f"folder instead: {option}='/path/to/folder'"
        ) from e


def check_model_folder(folder: Path, what: str) -> None:
    """A transformers folder toklip loads: a ``config.json`` and safetensors weights (never pickled .bin/.pt)."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} has no config.json: it is not a transformers {what} folder")
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder} has no *.safetensors weights; toklip loads no pickled (.bin/.pt) weights. "
                              "Convert them once where you trust the file: model.save_pretrained(out, "
                              "safe_serialization=True)")


def resolve_weights(spec: ComponentSpec, pretrained: bool | str) -> Path | str:
    """Turn ``pretrained`` into what the component loads: True (the first tag) or a tag name -> the file from the
    hub cache; a local file or folder -> its path; a hub repo id ("owner/name") -> passed through for components
    that read whole repos (e.g. a transformers checkpoint)."""
    if isinstance(pretrained, (str, Path)) and not (isinstance(pretrained, str) and pretrained in spec.pretrained):
        path = Path(pretrained).expanduser()
        if path.exists():
            return path
        if isinstance(pretrained, str) and is_hub_repo_id(pretrained):
            return pretrained
        tags = ", ".join(spec.pretrained) or "none"
        raise WeightsNotFoundError(
            f"pretrained={str(pretrained)!r} for {spec.kind} {spec.name!r} is neither an existing file nor a "
            f"known weights tag (tags: {tags})"
        )
    if not spec.pretrained:
        raise WeightsNotFoundError(
            f"{spec.kind} {spec.name!r} has no published weights; pass pretrained='/path/to/checkpoint'"
        )
    weights: Weights = spec.pretrained[pretrained] if isinstance(pretrained, str) else next(iter(spec.pretrained.values()))
    if not weights.hf_hub_id or not weights.file:
        raise WeightsNotFoundError(f"weights tag {weights.tag!r} of {spec.name!r} names no hub file")
    return hub_file(weights.hf_hub_id, weights.file, what=f"{spec.name} weights ({weights.tag})")


def resolve_component_weights(kind: str, name: str, pretrained: bool | str) -> Path | str:
    """Kept for plugins written against toklip 0.1: components now receive resolved paths from
    ``ComponentSpec.create``; use :func:`toklip.weights.local_weights` there instead."""
    from toklip.core.host import get_spec

    return resolve_weights(get_spec(kind, name), pretrained)


def local_weights(value: bool | str | Path, what: str) -> Path:
    """What a component does with ``pretrained=``/``checkpoint=``: it is a local path by now (``spec.create``
    resolved tags and ``True`` through the registry); anything else is a clear error, never a download."""
    if isinstance(value, (str, Path)) and not isinstance(value, bool):
        path = Path(value).expanduser()
        if path.exists():
            return path
    raise WeightsNotFoundError(
        f"{what}: weights {value!r} are not a local file. Build components through the registry "
        "(toklip.build(...) or toklip.get_spec(kind, name).create(pretrained=...)), which resolves weight tags "
        "to files once, or pass a local path"
    )
