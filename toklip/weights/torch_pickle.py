"""Reading PyTorch ``.pt`` files without trusting them.

``torch.load(weights_only=True)`` refuses pickles that import anything beyond tensors and plain containers.
Official TokLIP training checkpoints also hold numpy float64 learning rates (pickled as
``numpy.core.multiarray.scalar(numpy.dtype('f8'), bytes)``). Allowlisting numpy's real ``dtype`` and ``scalar``
for them lets a file BUILD dtypes with object sub-arrays and forge ``numpy.void`` scalars holding raw object
pointers (a segfault, or an object of the attacker's choosing). So those globals are bound here to stand-ins that
can only make plain Python numbers. Before torch reads anything, the zip directory is checked (compressed
records would be memory-mapped as raw bytes: garbage weights) and the pickle opcodes are scanned, so that a
refusal says what was found.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import threading
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from toklip.core.errors import CheckpointError

# What torch.save writes and torch's weights-only unpickler reads: protocol 2 opcodes (torch/_weights_only_unpickler).
TORCH_OPCODES = frozenset({
    "PROTO", "STOP", "GLOBAL", "REDUCE", "NEWOBJ", "BUILD", "BINPERSID", "MARK", "TUPLE", "TUPLE1", "TUPLE2",
    "TUPLE3", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
    "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
    "SHORT_BINSTRING", "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT",
})
_STRING_OPCODES = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
                             "SHORT_BINSTRING"})
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy file
_LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, storage keys
_ZIP_MAGIC = b"PK\x03\x04"
# The numpy scalar types a learning rate (or a step count) can have; nothing with fields, sub-arrays or objects.
_NUMBER_TYPESTRS = frozenset({"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"})
_BYTEORDERS = {"<": "<", ">": ">", "|": "=", "=": "="}


class _Refused(Exception):
    """Raised by the numpy stand-ins; read_torch_checkpoint turns it into a CheckpointError naming the file."""


class _NumberDtype:
    """What ``numpy.dtype(...)`` in a checkpoint becomes: a plain number dtype, only usable by ``_number``."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"numpy.dtype({self.dtype.str!r})"

    def __setstate__(self, state: Any) -> None:
        # numpy's BUILD state for a plain number dtype: (3, byteorder, None, None, None, -1, -1, 0). Anything
        # else (sub-arrays, field names, fields, sizes, object flags, metadata) is what the attack is made of.
        ok = (
            type(state) is tuple and len(state) == 8
            and all(type(v) is int for v in (state[0], *state[5:]))
            and (state[0], *state[5:]) == (3, -1, -1, 0)
            and type(state[1]) is str and state[1] in _BYTEORDERS
            and state[2] is None and state[3] is None and state[4] is None
        )
        if not ok:
            raise _Refused(f"a numpy dtype with state {_short(state)}; only plain number dtypes are accepted")
        self.dtype = self.dtype.newbyteorder(_BYTEORDERS[state[1]])


def _number_dtype(typestr: Any, align: Any = False, copy: Any = True) -> _NumberDtype:
    """Stand-in for ``numpy.dtype``: only the number dtypes numpy scalars of official files use."""
    if type(typestr) is not str or typestr not in _NUMBER_TYPESTRS or type(align) is not bool or type(copy) is not bool:
        raise _Refused(f"numpy.dtype{_short((typestr, align, copy))}; only plain number dtypes are accepted")
    return _NumberDtype(np.dtype(typestr))


def _number(dtype: Any, data: Any = None) -> float | int | bool:
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number from exactly one item's bytes."""
    if type(dtype) is not _NumberDtype or type(data) is not bytes or len(data) != dtype.dtype.itemsize:
        raise _Refused(f"a numpy scalar from {_short((dtype, data))}; only plain numbers are accepted")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


# (stand-in, the pickle global it answers to). _NumberDtype must be listed for torch to BUILD it; its name has a
# newline, which a GLOBAL opcode cannot spell, so no pickle can import the class itself.
SAFE_GLOBALS: list[Any] = [
    (_number, "numpy.core.multiarray.scalar"),  # numpy 1 spelling (the released files)
    (_number, "numpy._core.multiarray.scalar"),  # numpy 2 spelling
    (_number_dtype, "numpy.dtype"),
    (_NumberDtype, "toklip\n_NumberDtype"),
]
_NUMPY_GLOBALS = {name for _, name in SAFE_GLOBALS}
# Allowed by torch and harmless: left out when a refusal lists the imports that are not plain data.
_PLAIN_GLOBALS = {"collections.OrderedDict", "collections.Counter", "_codecs.encode", "builtins.set",
                  "builtins.bytearray", "builtins.complex"} | _NUMPY_GLOBALS
_LOAD_LOCK = threading.Lock()  # torch's safe_globals() edits a process-wide set: one load at a time


def read_torch_checkpoint(path: Path) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) with only tensors, containers and plain numbers.

    Raises CheckpointError saying what was found for anything else: other file types, compressed or
    encrypted zip records, pickles that import code or use opcodes torch's safe loader does not read."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        _scan_torch_pickles(path, [io.BytesIO(_zip_data_pickle(path))], legacy=False)
        mmap = True
    elif len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= 5:
        with open(path, "rb") as f:  # the pickles follow one another; each scan leaves f after its STOP
            _scan_torch_pickles(path, [_BoundedReader(f, path.stat().st_size)] * _LEGACY_PICKLES, legacy=True)
        mmap = False
    else:
        raise CheckpointError(
            f"{path} is not a checkpoint toklip can read: it is not a zip archive (what torch.save writes), not a "
            f"safetensors file and not a legacy PyTorch pickle; its first bytes are {head!r}. Pass a .safetensors "
            "file or a .pt/.pth/.ckpt file written by torch.save."
        )
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except _Refused as e:
        raise CheckpointError(_refusal(path, f"it builds {e}")) from None
    except pickle.UnpicklingError as e:
        text = str(e)
        hit = next((ln.strip() for ln in text.splitlines()
                    if any(w in ln for w in ("GLOBAL", "Can only", "unrecognized function", "persistent"))), None)
        if hit is None:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {text[:300]}") from e
        imported = re.search(r"GLOBAL (\S+) was not an allowed global", hit)
        found = f"it imports {imported.group(1)}" if imported else hit.removeprefix("WeightsUnpickler error: ")[:300]
        raise CheckpointError(_refusal(path, f"it contains pickled Python objects beyond tensors ({found})")) from e
    except (RuntimeError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OSError,
            zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt): {type(e).__name__}: {str(e)[:300]}"
        ) from e
    stray = _find_stray_dtype(obj)
    if stray:
        raise CheckpointError(_refusal(path, "it holds a bare numpy dtype object; only numpy numbers are accepted"))
    return obj


class _BoundedReader:
    """A file for pickletools that never asks for more bytes than are left (Python allocates a read's size up
    front, and a pickle can declare a 2**62-byte string) and reads lines of at most 64 KiB."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._f.readline(1 << 16)


def _refusal(path: Path, what: str) -> str:
    return (f"refused to load {path}: {what}. toklip never unpickles arbitrary objects, since that can run code "
            "or corrupt memory. If you trust the file, re-save its tensors (state_dict) with safetensors and load "
            "that.")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _zip_data_pickle(path: Path) -> bytes:
    """The ``data.pkl`` record torch will read, after checking that every record is stored as is."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_zip_records(path, infos)
            prefix = infos[0].filename.split("/", 1)[0]  # torch's reader names the archive after the first record
            names = {i.filename for i in infos}
            if f"{prefix}/data.pkl" not in names:
                kind = "a TorchScript archive" if f"{prefix}/constants.pkl" in names else "a zip archive"
                raise CheckpointError(
                    f"{path} is {kind}, not a torch.save checkpoint (no {prefix}/data.pkl); toklip reads "
                    "safetensors files and torch.save checkpoints"
                )
            return zf.read(f"{prefix}/data.pkl")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it starts like a zip archive but the archive is truncated or "
            f"corrupt ({type(e).__name__}: {str(e)[:200]})"
        ) from e


def _check_zip_records(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse what torch's memory-mapped reader would misread: compressed, encrypted or inconsistent records."""
    if not infos:
        raise CheckpointError(f"{path} is an empty zip archive, not a PyTorch checkpoint")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"{path} is a damaged zip archive: record {dup!r} appears twice")
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        methods = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
        first = packed[0]
        method = methods.get(first.compress_type, f"method {first.compress_type}")
        raise CheckpointError(
            f"{path} has compressed zip records ({len(packed)} of {len(infos)}, e.g. {first.filename!r} with "
            f"{method}). torch.save stores records uncompressed and toklip memory-maps them, so compressed ones "
            "would load as garbage; nothing was decompressed. Re-save the checkpoint with torch.save, or re-pack "
            "it without compression (zipfile.ZIP_STORED, `zip -0`)."
        )
    locked = [i.filename for i in infos if i.flag_bits & 0x1]
    if locked:
        raise CheckpointError(f"{path} has encrypted zip records (e.g. {locked[0]!r}); toklip cannot read them")
    uneven = [i.filename for i in infos if i.file_size != i.compress_size]
    if uneven:
        raise CheckpointError(f"{path} is a damaged zip archive: record {uneven[0]!r} has inconsistent sizes")


def _scan_torch_pickles(path: Path, streams: list[Any], *, legacy: bool) -> None:
    """Scan each pickle's opcodes; refuse (naming what was found) what torch's safe loader cannot read."""
    for n, stream in enumerate(streams):
        try:
            ops, imports, arg, protocol = _scan(stream)
        except ValueError as e:
            raise CheckpointError(
                f"{path} is not a readable checkpoint (truncated or corrupt pickle data: {str(e)[:200]})"
            ) from e
        if legacy and n == 0 and not (ops - {"FRAME"} == {"PROTO", "LONG1", "STOP"} and arg == _LEGACY_MAGIC):
            found = [g for g in imports if g not in _PLAIN_GLOBALS]
            if found:
                raise CheckpointError(_refusal(path, f"it is a plain Python pickle that imports {_names(found)}"))
            raise CheckpointError(
                f"{path} is a plain Python pickle, not a PyTorch checkpoint (torch.save files are zip archives, or "
                "legacy files that start with PyTorch's magic number). Save it with torch.save or safetensors."
            )
        odd = sorted(ops - TORCH_OPCODES)
        if odd:
            found = [g for g in imports if not g.startswith("torch.") and g not in _PLAIN_GLOBALS]
            what = (f"it uses pickle opcodes torch's weights-only loader does not read ({', '.join(odd[:6])}; "
                    f"pickle protocol {protocol}, where torch.save writes 2)")
            if found:
                what += f" and imports {_names(found)}"
            raise CheckpointError(_refusal(path, what))


def _names(imports: list[str]) -> str:
    more = f" (+{len(imports) - 5} more)" if len(imports) > 5 else ""
    return ", ".join(imports[:5]) + more


def _scan(f: Any) -> tuple[set[str], list[str], Any, int]:
    """Opcode names, imported globals (best effort for STACK_GLOBAL), first argument and protocol of one pickle."""
    ops: set[str] = set()
    imports: list[str] = []
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # the last two pushed values, strings kept, others as None (for STACK_GLOBAL names)
    first_arg: Any = None
    protocol = 0
    for op, arg, _pos in pickletools.genops(f):
        ops.add(op.name)
        if op.name == "PROTO":
            protocol = arg
        if first_arg is None and op.name not in ("PROTO", "FRAME"):
            first_arg = arg
        if op.name == "GLOBAL":
            imports.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            imports.append(".".join(str(s) for s in recent) if all(isinstance(s, str) for s in recent) else "?")
        if op.name in _STRING_OPCODES:
            recent = [*recent[-1:], arg if isinstance(arg, str) else None]
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[arg if op.name != "MEMOIZE" else len(memo)] = recent[-1] if recent else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            recent = [*recent[-1:], memo.get(arg)]
        elif op.name not in ("FRAME", "PROTO"):
            recent = [*recent[-1:], None]
    return ops, list(dict.fromkeys(imports)), first_arg, protocol


def _find_stray_dtype(obj: Any) -> bool:
    """Whether a ``_NumberDtype`` was left in the result (a dtype not consumed by a numpy scalar)."""
    todo, seen = [obj], set()
    while todo:
        item = todo.pop()
        if type(item) is _NumberDtype:
            return True
        if id(item) in seen or not isinstance(item, (dict, list, tuple, set, frozenset)):
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        else:
            todo.extend(item)
    return False
