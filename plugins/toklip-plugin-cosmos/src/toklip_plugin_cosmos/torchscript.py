"""Read the weights out of a TorchScript archive (``encoder.jit``, ``decoder.jit``, ``autoencoder.jit``)
without running it, in memory bounded by what the archive really stores.

``torch.jit.load`` would compile and instantiate the archive's code. Here only the module tree in
``<archive>/data.pkl`` is unpickled (:mod:`toklip_plugin_cosmos.script_pickle`: no global outside a short
allowlist, no tensor built); then, before any tensor byte is read or allocated,

- the module tree is walked within :data:`MAX_MODULES` visits, :data:`MAX_DEPTH` levels and :data:`MAX_TENSORS`
  tensors (a module reachable along many paths counts once per path, so a shared-child graph cannot multiply);
- every tensor must be a view inside its storage that does not repeat elements: no stride 0 on a dimension
  longer than 1, ``offset + extent <= storage length``, no more elements than the storage holds, and all
  distinct views together no more bytes than their storages;
- every storage record must be stored uncompressed (as ``torch.jit.save`` writes it, so no zip bomb can hide
  in one), hold exactly the bytes its persistent id declares, within :data:`MAX_RECORD_BYTES` each and
  :data:`MAX_TOTAL_BYTES` in all.

Only then are the storages read (each once, exactly its declared size) and the views copied out. The result
is the flat ``state_dict``-style mapping ``"encoder.conv_in.weight" -> Tensor``, including the non-persistent
buffers the archive also records (callers drop those).
"""

from __future__ import annotations

import math
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from toklip import CheckpointError
from toklip_plugin_cosmos.script_pickle import ScriptObject, ScriptUnpickler, StorageRef, TensorRef

# Limits, each far above the released Cosmos DI files (DI8x8/DI16x16, Cosmos-Tokenize1 360p). Those hold a
# data.pkl of ~15-35 KB, about 90 (encoder.jit) to 220 (autoencoder.jit) modules nested at most 7 deep, one
# storage per tensor, every tensor dense, and at most ~170 MB of bfloat16 weights (autoencoder.jit).
MAX_PICKLE_BYTES = 1 << 20  # data.pkl (1 MiB)
MAX_MODULES = 10_000  # module visits while flattening the tree
MAX_DEPTH = 32  # module nesting
MAX_TENSORS = 10_000  # tensor attributes found in the tree
MAX_NAME_CHARS = 256  # one attribute name
MAX_RECORD_BYTES = 1 << 30  # one storage (1 GiB)
MAX_TOTAL_BYTES = 4 << 30  # all storages of one archive (4 GiB)


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: refusing this TorchScript archive: {problem}")


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip holding ``<name>/data.pkl`` and ``<name>/code/`` (what ``torch.jit.save`` writes)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in names) and any("/code/" in n for n in names)


def _check_record(path: Path, info: zipfile.ZipInfo, limit: int) -> None:
    """Refuse a record that is compressed (torch.jit.save never compresses data) or larger than ``limit``."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise _refuse(path, (
            f"record {info.filename} is compressed (zip method {info.compress_type}); torch.jit.save stores "
            "data.pkl and tensor data uncompressed, so the file was re-packed or forged. Use the file as "
            "published, or re-pack it without compression (zip -0)"))
    if info.compress_size != info.file_size:
        raise _refuse(path, f"stored record {info.filename} declares {info.compress_size} bytes in the file but "
                            f"{info.file_size} when read; the zip directory is inconsistent")
    if info.file_size > limit:
        raise _refuse(path, f"record {info.filename} declares {info.file_size} bytes (limit {limit})")


def _read_stored(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """One record's bytes, exactly as many as it declares, once :func:`_check_record` accepts it."""
    _check_record(path, info, limit)
    with zf.open(info) as f:
        data = f.read(info.file_size)
    if len(data) != info.file_size:
        raise CheckpointError(f"truncated TorchScript archive {path}: record {info.filename} is short")
    return data


def _tensor_refs(path: Path, root: ScriptObject) -> dict[str, TensorRef]:
    """Every tensor attribute of the module tree, keyed like ``state_dict``, within the graph limits."""
    found: dict[str, TensorRef] = {}
    visits = 0

    def walk(obj: ScriptObject, prefix: str, depth: int) -> None:
        nonlocal visits
        visits += 1
        if visits > MAX_MODULES:
            raise _refuse(path, f"the module tree has more than {MAX_MODULES} module visits (modules shared "
                                "along many paths?); a Cosmos tokenizer has a few hundred")
        if depth > MAX_DEPTH:
            raise _refuse(path, f"modules are nested more than {MAX_DEPTH} deep (or in a cycle)")
        for name, value in obj.attributes.items():
            if not isinstance(value, (TensorRef, ScriptObject)):
                continue
            if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
                raise _refuse(path, f"an attribute under {prefix[:200]!r} has no name of 1..{MAX_NAME_CHARS} chars")
            if isinstance(value, ScriptObject):
                walk(value, f"{prefix}{name}.", depth + 1)
                continue
            key = prefix + name
            if key in found:
                raise _refuse(path, f"two tensors are named {key[:200]!r}")
            found[key] = value
            if len(found) > MAX_TENSORS:
                raise _refuse(path, f"more than {MAX_TENSORS} tensors; a Cosmos tokenizer has a few hundred")

    walk(root, "", 0)
    return found


def _check_view(path: Path, key: str, ref: TensorRef) -> int:
    """The view's element count, once it is known to lie inside its storage without repeating elements."""
    length = ref.storage.numel
    where = f"tensor {key[:200]!r} (size {list(ref.size)}, stride {list(ref.stride)}, offset {ref.offset})"
    if any(st == 0 and n > 1 for n, st in zip(ref.size, ref.stride)):
        raise _refuse(path, f"{where} has stride 0, a broadcast view that repeats its storage; TorchScript "
                            "exports of Cosmos store every tensor densely")
    numel = math.prod(ref.size)
    end = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride)) + 1 if numel else ref.offset
    if end > length or numel > length - ref.offset:
        raise _refuse(path, f"{where} needs {max(end, ref.offset + numel)} elements but storage "
                            f"{ref.storage.key} holds {length}")
    return numel


def _storage_infos(
    path: Path, zf: zipfile.ZipFile, prefix: str, refs: dict[str, TensorRef]
) -> dict[StorageRef, zipfile.ZipInfo]:
    """The zip record of each storage the tensors use, once every view and size is checked (nothing read yet)."""
    views = {ref: _check_view(path, key, ref) for key, ref in refs.items()}
    infos: dict[StorageRef, zipfile.ZipInfo] = {}
    total = 0
    storages = {ref.storage for ref in views}
    for storage in sorted(storages, key=lambda s: int(s.key)):
        try:
            info = zf.getinfo(f"{prefix}data/{storage.key}")
        except KeyError as e:
            raise CheckpointError(f"truncated TorchScript archive {path}: storage {storage.key} is missing") from e
        nbytes = storage.numel * storage.dtype.itemsize
        if info.file_size != nbytes:
            raise _refuse(path, f"storage {storage.key} declares {storage.numel} {storage.dtype} elements "
                                f"({nbytes} bytes) but its record holds {info.file_size} bytes")
        _check_record(path, info, MAX_RECORD_BYTES)
        total += nbytes
        if total > MAX_TOTAL_BYTES:
            raise _refuse(path, f"its storages exceed {MAX_TOTAL_BYTES} bytes in all")
        infos[storage] = info
    materialised = sum(numel * ref.storage.dtype.itemsize for ref, numel in views.items())
    if materialised > total:
        raise _refuse(path, f"its tensors claim {materialised} bytes but their storages hold {total} "
                            "(views that overlap would multiply memory)")
    return infos


def _materialise(
    path: Path, zf: zipfile.ZipFile, refs: dict[str, TensorRef], infos: dict[StorageRef, zipfile.ZipInfo]
) -> dict[str, Tensor]:
    """Read each storage once and copy its views out; a view shared by several names becomes one tensor."""
    by_storage: dict[StorageRef, list[TensorRef]] = {}
    for ref in dict.fromkeys(refs.values()):
        by_storage.setdefault(ref.storage, []).append(ref)
    tensors: dict[TensorRef, Tensor] = {}
    for storage, views in by_storage.items():
        raw = _read_stored(path, zf, infos[storage], MAX_RECORD_BYTES)
        flat = torch.frombuffer(bytearray(raw), dtype=storage.dtype) if raw else torch.empty(0, dtype=storage.dtype)
        if storage.dtype == torch.bool and flat.numel() and flat.view(torch.uint8).max() > 1:
            raise _refuse(path, f"bool storage {storage.key} holds bytes other than 0 and 1")
        for ref in views:
            tensors[ref] = flat.as_strided(ref.size, ref.stride, ref.offset).clone()
        del raw, flat
    return {key: tensors[ref] for key, ref in refs.items()}


def read_torchscript_state(path: str | Path) -> dict[str, Tensor]:
    """Every tensor attribute of a TorchScript module archive, keyed like ``Module.state_dict()``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
            if len(pkl) != 1:
                raise CheckpointError(f"{path} is not a TorchScript archive (no single <name>/data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in names:
                raw = _read_stored(path, zf, zf.getinfo(f"{prefix}byteorder"), 16)
                order = raw.decode(errors="replace").strip()
                if order != sys.byteorder:
                    raise CheckpointError(f"{path} was saved {order}-endian; this machine is {sys.byteorder}-endian")
            data = _read_stored(path, zf, zf.getinfo(pkl[0]), MAX_PICKLE_BYTES)
            root = ScriptUnpickler(data).load()
            if not isinstance(root, ScriptObject):
                raise CheckpointError(f"{path}: the archive's root is not a module (found a {type(root).__name__})")
            refs = _tensor_refs(path, root)
            infos = _storage_infos(path, zf, prefix, refs)
            return _materialise(path, zf, refs, infos)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise _refuse(path, f"its data.pkl is not a TorchScript module pickle: {e}") from e
    except (zipfile.BadZipFile, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError,
            RuntimeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a readable TorchScript archive: {type(e).__name__}: {e}") from e
