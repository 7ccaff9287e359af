"""Read the weights out of a TorchScript archive (``encoder.jit``, ``decoder.jit``, ``autoencoder.jit``)
without running it.

``torch.jit.load`` would compile and instantiate the archive's code. Here only the module tree in
``<archive>/data.pkl`` is unpickled, with a restricted unpickler that resolves no global at all: TorchScript
classes become inert attribute holders, tensors are rebuilt from the raw little-endian storages in
``<archive>/data/<key>``, and anything else becomes an inert placeholder. Nothing from the file is imported,
called or compiled. The result is the flat ``state_dict``-style mapping ``"encoder.conv_in.weight" -> Tensor``,
including non-persistent buffers the archive also records (callers drop those).
"""

from __future__ import annotations

import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from toklip.errors import CheckpointError

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for a TorchScript class instance: keeps the attribute dict the pickle sets, runs nothing."""

    type_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {}


class _Opaque:
    """Any other global: an inert value (its constructor arguments are ignored)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Tensor, offset: int, size: Any, stride: Any, *_: Any) -> Tensor:
    if not isinstance(storage, Tensor):
        raise CheckpointError("malformed TorchScript archive: a tensor refers to something that is not a storage")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset))
    except RuntimeError as e:
        raise CheckpointError(f"malformed TorchScript archive: tensor view out of its storage ({e})") from e


def _rebuild_parameter(data: Tensor, *_: Any) -> Tensor:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, Tensor] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module.startswith("__torch__"):
            key = f"{module}.{name}"
            if key not in self.classes:
                self.classes[key] = type(name, (_ScriptObject,), {"type_name": key})
            return self.classes[key]
        return _Opaque

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"malformed TorchScript archive: unknown persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise CheckpointError(f"malformed TorchScript archive: unsupported storage type {kind!r:.80}")
        key = str(key)
        if key not in self.storages:
            if not re.fullmatch(r"[0-9]+", key):
                raise CheckpointError(f"malformed TorchScript archive: bad storage key {key!r:.40}")
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError as e:
                raise CheckpointError(f"truncated TorchScript archive: storage {key} is missing") from e
            itemsize = torch.empty(0, dtype=kind.dtype).element_size()
            if len(raw) < int(numel) * itemsize:
                raise CheckpointError(f"truncated TorchScript archive: storage {key} is shorter than declared")
            flat = torch.frombuffer(bytearray(raw[: int(numel) * itemsize]), dtype=kind.dtype) if numel else (
                torch.empty(0, dtype=kind.dtype)
            )
            self.storages[key] = flat
        return self.storages[key]


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip holding ``<name>/data.pkl`` and ``<name>/code/`` (what ``torch.jit.save`` writes)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names) and any("/code/" in n for n in names)


def _flatten(obj: _ScriptObject, prefix: str, out: dict[str, Tensor], depth: int = 0) -> None:
    if depth > 64:
        raise CheckpointError("malformed TorchScript archive: module tree nested too deeply")
    for name, value in obj.attributes.items():
        if isinstance(value, Tensor):
            out[prefix + name] = value.clone()
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out, depth + 1)


def read_torchscript_state(path: str | Path) -> dict[str, Tensor]:
    """Every tensor attribute of a TorchScript module archive, keyed like ``Module.state_dict()``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
            if len(pkl) != 1:
                raise CheckpointError(f"{path} is not a TorchScript archive (no single <name>/data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in zf.namelist():
                order = zf.read(f"{prefix}byteorder").decode(errors="replace").strip()
                if order != sys.byteorder:
                    raise CheckpointError(f"{path} was saved {order}-endian; this machine is {sys.byteorder}-endian")
            with zf.open(pkl[0]) as f:
                root = _RestrictedUnpickler(f, zf, prefix).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable TorchScript archive: {type(e).__name__}: {e}") from e
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: the archive's root is not a module")
    out: dict[str, Tensor] = {}
    _flatten(root, "", out)
    return out
