"""The restricted unpickler for a TorchScript archive's ``data.pkl``: it builds inert placeholders, never tensors.

``data.pkl`` describes the module tree: ``__torch__.*`` module objects whose state is a dict of attributes, and
tensors as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` over persistent storage ids.
This unpickler resolves only those globals, each to a function or class of this module that records data and
runs nothing; every other global is refused. It is pickle's pure-Python unpickler with an opcode allowlist, so
the few opcodes that could reach other code are checked too: ``BUILD`` and ``NEWOBJ`` only act on the module
placeholders, dict keys must be plain scalars (a nested-tuple key could take exponential time to hash), and set,
extension-registry and out-of-band-buffer opcodes are refused. No storage bytes are read and no tensor is built
here: tensors come back as :class:`TensorRef` (storage, offset, size, stride), checked and materialised by
:mod:`toklip_plugin_cosmos.torchscript`.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Legacy typed-storage names the TorchScript pickler writes, and the dtype of each.
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

MAX_CLASSES = 4_096  # distinct __torch__ class names per archive (a Cosmos autoencoder.jit has a few hundred)
MAX_NDIM = 16  # tensor dimensions (Cosmos weights have at most 4)
_MAX_INT = 1 << 62  # any size, stride, offset or element count at or above this is not a real tensor


class ScriptPickleError(pickle.UnpicklingError):
    """``data.pkl`` holds something a TorchScript module archive does not; the message says what."""


@dataclass(frozen=True)
class StorageType:
    """``torch.FloatStorage`` and friends as they appear in a storage's persistent id."""

    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class StorageRef:
    """A storage the pickle refers to: its record ``data/<key>`` and the element count it declares."""

    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor as ``data.pkl`` declares it: a strided view of a storage, not yet checked or read."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class ScriptObject:
    """Stands in for a TorchScript module/class instance: keeps the attribute dict the pickle sets, runs nothing."""

    type_name = "?"

    def __init__(self) -> None:
        self.attributes: dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if type(state) is dict else {}


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple or len(value) > MAX_NDIM:
        raise ScriptPickleError(f"a tensor's {what} is not a tuple of at most {MAX_NDIM} integers")
    if not all(type(v) is int and 0 <= v < _MAX_INT for v in value):
        raise ScriptPickleError(f"a tensor's {what} holds a value that is not a non-negative integer below 2**62")
    return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    """``torch._utils._rebuild_tensor_v2``, recording the view instead of making it."""
    if not isinstance(storage, StorageRef):
        raise ScriptPickleError(f"a tensor refers to a {type(storage).__name__}, not to a storage")
    if type(offset) is not int or not 0 <= offset < _MAX_INT:
        raise ScriptPickleError("a tensor's storage offset is not a non-negative integer below 2**62")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise ScriptPickleError(f"a tensor has {len(size)} sizes but {len(stride)} strides")
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """``torch._utils._rebuild_parameter``: a parameter is its data here."""
    if not isinstance(data, TensorRef):
        raise ScriptPickleError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _empty_hooks() -> dict:
    """``collections.OrderedDict()``, which the pickler writes for a tensor's (empty) backward hooks."""
    return {}


def _same_value(value: Any, *_: Any) -> Any:
    """``torch.jit._pickle.restore_type_tag`` / ``build_*list``: TorchScript's type tags on plain lists/dicts."""
    return value


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _empty_hooks,
    **{("torch.jit._pickle", n): _same_value
       for n in ("restore_type_tag", "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")},
}

_SCALAR_KEY_TYPES = (str, int, float, bool, type(None))

# The opcodes a TorchScript data.pkl can need (protocol 2 as written, plus their plain-data siblings).
_ALLOWED_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE
    INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST APPEND APPENDS LIST EMPTY_DICT DICT SETITEM SETITEMS
    GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE
    GLOBAL STACK_GLOBAL REDUCE NEWOBJ BUILD BINPERSID
""".split())
_OPCODES = {op.name: ord(op.code) for op in pickletools.opcodes}
_OPCODE_NAMES = {code: name for name, code in _OPCODES.items()}


class _Dispatch(dict):
    def __missing__(self, code: int) -> Any:
        name = _OPCODE_NAMES.get(code, f"0x{code:02x}")
        raise ScriptPickleError(f"pickle opcode {name} is not allowed in a TorchScript module archive")


def _checked_setitems(base: Callable[[Any], None], n_items: Callable[[Any], list]) -> Callable[[Any], None]:
    def load(self: Any) -> None:
        target, items = n_items(self)
        if type(target) is not dict:
            raise ScriptPickleError(f"a dict item is set on a {type(target).__name__}")
        for key in items[0::2]:
            if type(key) not in _SCALAR_KEY_TYPES:
                raise ScriptPickleError(f"a dict key is a {type(key).__name__}; only str/int/float/bool keys occur")
        base(self)

    return load


def _setitem_args(self: Any) -> tuple[Any, list]:
    return self.stack[-3], [self.stack[-2]]


def _setitems_args(self: Any) -> tuple[Any, list]:
    return self.metastack[-1][-1], self.stack


def _dict_args(self: Any) -> tuple[Any, list]:
    return {}, self.stack


def _checked_append(base: Callable[[Any], None], target: Callable[[Any], Any]) -> Callable[[Any], None]:
    def load(self: Any) -> None:
        if type(target(self)) is not list:
            raise ScriptPickleError(f"a list item is appended to a {type(target(self)).__name__}")
        base(self)

    return load


def _load_newobj(self: Any) -> None:
    cls = self.stack[-2]
    if not (isinstance(cls, type) and issubclass(cls, ScriptObject)):
        raise ScriptPickleError(f"NEWOBJ on a {type(cls).__name__}: only TorchScript classes are instantiated")
    del self.stack[-2:]
    self.append(cls())


def _load_build(self: Any) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    if not isinstance(inst, ScriptObject):
        raise ScriptPickleError(f"BUILD on a {type(inst).__name__}: only TorchScript objects take a state")
    inst.__setstate__(state)


def _dispatch_table() -> _Dispatch:
    base = pickle._Unpickler.dispatch  # the pure-Python unpickler; its opcode handlers are plain functions
    table = _Dispatch({code: fn for code, fn in base.items() if _OPCODE_NAMES.get(code) in _ALLOWED_OPCODES})
    ops = _OPCODES
    table[ops["SETITEM"]] = _checked_setitems(base[ops["SETITEM"]], _setitem_args)
    table[ops["SETITEMS"]] = _checked_setitems(base[ops["SETITEMS"]], _setitems_args)
    table[ops["DICT"]] = _checked_setitems(base[ops["DICT"]], _dict_args)
    table[ops["APPEND"]] = _checked_append(base[ops["APPEND"]], lambda self: self.stack[-2])
    table[ops["APPENDS"]] = _checked_append(base[ops["APPENDS"]], lambda self: self.metastack[-1][-1])
    table[ops["NEWOBJ"]] = _load_newobj
    table[ops["BUILD"]] = _load_build
    return table


class ScriptUnpickler(pickle._Unpickler):
    """Unpickles ``data.pkl`` into :class:`ScriptObject` / :class:`TensorRef` placeholders (see module docstring)."""

    dispatch = _dispatch_table()

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, StorageRef] = {}
        self.classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            key = f"{module}.{name}"
            if key not in self.classes:
                if len(self.classes) >= MAX_CLASSES:
                    raise ScriptPickleError(f"more than {MAX_CLASSES} distinct TorchScript classes")
                self.classes[key] = type(name, (ScriptObject,), {"type_name": key})
            return self.classes[key]
        raise ScriptPickleError(
            f"the pickle imports {module[:80]}.{name[:80]}; a TorchScript module archive needs only __torch__ "
            "classes, tensor storages and torch._utils._rebuild_tensor_v2 (this file is not a plain export)"
        )

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise ScriptPickleError(f"unknown persistent id (a {type(pid).__name__}, not a storage tuple)")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, StorageType):
            raise ScriptPickleError(f"a storage's type is a {type(kind).__name__}, not a torch storage type")
        if type(key) is not str or not re.fullmatch(r"[0-9]{1,12}", key):
            raise ScriptPickleError("a storage key is not a decimal number")
        if type(numel) is not int or not 0 <= numel < _MAX_INT:
            raise ScriptPickleError(f"storage {key} declares an element count that is not a non-negative integer")
        ref = StorageRef(key, kind.dtype, numel)
        if self.storages.setdefault(key, ref) != ref:
            raise ScriptPickleError(f"storage {key} is declared twice with different types or sizes")
        return ref
