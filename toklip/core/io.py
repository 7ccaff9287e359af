"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` in one rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


MAX_CONFIG_BYTES = 16 << 20  # configs, presets and manifests are small; anything larger is not one


def read_json(path: str | Path, what: str = "config", *, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """A JSON file read the one way every config, preset and state file is: a missing file, a file too large to be
    one, bad UTF-8 or bad JSON are each a ConfigError that names the file and the problem."""
    path = Path(path).expanduser()
    return parse_json(read_bounded(path, what, max_bytes=max_bytes), f"{what} file {path}")


def read_bounded(path: str | Path, what: str, *, max_bytes: int) -> bytes:
    """A file's bytes, refused (ConfigError naming the file) when it is missing or larger than ``max_bytes``: a
    config or list file that size is a mistake or an attack, not data."""
    from toklip.core.errors import ConfigError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{what} file {path} is {size} bytes; a {what} is at most {max_bytes} bytes")
    return path.read_bytes()


def parse_json(data: bytes | str, where: str) -> Any:
    """``json.loads`` with UTF-8, syntax and integer-size errors reported as one ConfigError naming ``where``."""
    import json

    from toklip.core.errors import ConfigError

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise ConfigError(f"{where} is not valid JSON: {e}") from e
