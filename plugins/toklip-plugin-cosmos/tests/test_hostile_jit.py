"""Hostile TorchScript archives: small files that tried to make the reader allocate without bound (issue 11 item 6).

Each test writes its archive here, in the layout ``torch.jit.save`` uses (``<name>/data.pkl``, ``<name>/data/<key>``,
``<name>/code/``), and checks that the reader refuses it with a clear error before allocating anything large.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import resource
import sys
import types
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from toklip import CheckpointError
from toklip_plugin_cosmos import torchscript
from toklip_plugin_cosmos.torchscript import read_torchscript_state


class Storage:
    """A storage record ``data/<key>`` with ``numel`` elements of the storage type ``kind``."""

    def __init__(self, key: str, numel: int, kind: type = torch.FloatStorage) -> None:
        self.key, self.numel, self.kind = key, numel, kind


class View:
    """A tensor in data.pkl: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``; ``state`` adds a BUILD."""

    def __init__(self, storage: Storage, size: tuple, stride: tuple, offset: int = 0, state: Any = None) -> None:
        self.storage, self.size, self.stride, self.offset, self.state = storage, size, stride, offset, state


class Module:
    """A TorchScript module object: ``__torch__.Module`` + NEWOBJ + BUILD(attribute dict)."""

    def __init__(self, **attributes: Any) -> None:
        self.attributes = attributes

    def __reduce_ex__(self, protocol: int) -> tuple:
        return copyreg.__newobj__, (type(self),), self.attributes


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, View):
            args = (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args) + ((obj.state,) if obj.state is not None else ())
        return NotImplemented


@contextmanager
def _torch_namespace() -> Iterator[None]:
    """Make ``Module`` pickle as the global ``__torch__.Module``, as TorchScript classes do."""
    fake = types.ModuleType("__torch__")
    fake.Module = Module
    saved = Module.__module__, sys.modules.get("__torch__")
    Module.__module__, sys.modules["__torch__"] = "__torch__", fake
    try:
        yield
    finally:
        Module.__module__ = saved[0]
        if saved[1] is None:
            del sys.modules["__torch__"]
        else:
            sys.modules["__torch__"] = saved[1]


def data_pkl(root: Any) -> bytes:
    buf = io.BytesIO()
    with _torch_namespace():
        _ArchivePickler(buf, protocol=2).dump(root)
    return buf.getvalue()


def write_archive(path: Path, root: Any = None, records: dict[str, bytes] | None = None, *,
                  pkl: bytes | None = None, compress: set[str] = frozenset()) -> Path:
    """A TorchScript-layout zip: data.pkl of ``root`` (or raw ``pkl``) plus the ``data/<key>`` ``records``."""
    entries = {"data.pkl": data_pkl(root) if pkl is None else pkl, "byteorder": sys.byteorder.encode(),
               "code/__torch__/module.py": b"class Module(Module):\n  pass\n"}
    entries.update({f"data/{k}": v for k, v in (records or {}).items()})
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            method = zipfile.ZIP_DEFLATED if name in compress or name.startswith("code/") else zipfile.ZIP_STORED
            zf.writestr(f"archive/{name}", data, compress_type=method)
    return path


def floats(n: int) -> bytes:
    return torch.arange(n, dtype=torch.float32).numpy().tobytes()


@contextmanager
def peak_memory_grows_less_than(mib: int) -> Iterator[None]:
    """The process's peak resident memory grows by less than ``mib`` MiB inside the block."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < mib, f"peak memory grew {grown_mib:.0f} MiB"


# A well-formed archive written by the same helpers reads back: the refusals below are for the reasons they name.
def test_a_well_formed_archive_reads_back(tmp_path):
    weight, bias = Storage("0", 6), Storage("1", 2)
    root = Module(conv=Module(weight=View(weight, (3, 1), (1, 1)), bias=View(bias, (2,), (1,)), training=True),
                  tail=View(weight, (3,), (1,), offset=3), note="inert")  # two disjoint views of one storage
    state = read_torchscript_state(write_archive(tmp_path / "ok.jit", root, {"0": floats(6), "1": floats(2)}))
    assert list(state) == ["conv.weight", "conv.bias", "tail"]
    assert torch.equal(state["conv.weight"], torch.arange(3.0).view(3, 1))
    assert torch.equal(state["tail"], torch.arange(3.0, 6.0))
    assert torch.equal(state["conv.bias"], torch.arange(2.0))


# --- tensor views bounded by their storage -------------------------------------------------------------------


def test_stride_zero_view_is_refused_before_allocating(tmp_path):
    # 1 float of storage viewed as 2**28 floats: the old reader copied it out as a 1 GiB tensor.
    root = Module(weight=View(Storage("0", 1), (1 << 28,), (0,)))
    path = write_archive(tmp_path / "stride0.jit", root, {"0": floats(1)})
    assert path.stat().st_size < 1024
    with peak_memory_grows_less_than(64), pytest.raises(CheckpointError, match="'weight'.*has stride 0"):
        read_torchscript_state(path)


def test_stride_zero_on_a_length_one_dimension_is_fine(tmp_path):
    root = Module(weight=View(Storage("0", 4), (4, 1), (1, 0)))
    assert read_torchscript_state(write_archive(tmp_path / "ok.jit", root, {"0": floats(4)}))["weight"].shape == (4, 1)


@pytest.mark.parametrize("size, stride, offset", [
    ((32, 32), (1, 1), 0),  # overlapping rows: 1024 elements out of a 64-element storage
    ((64,), (1,), 1),  # runs one element past the end
    ((8,), (10,), 0),  # strides past the end
    ((0,), (1,), 65),  # empty, but the offset lies outside the storage
], ids=["overlap", "past-end", "stride-past-end", "offset-past-end"])
def test_views_outside_their_storage_are_refused(tmp_path, size, stride, offset):
    root = Module(weight=View(Storage("0", 64), size, stride, offset))
    with pytest.raises(CheckpointError, match=r"'weight'.*needs \d+ elements but storage 0 holds 64"):
        read_torchscript_state(write_archive(tmp_path / "view.jit", root, {"0": floats(64)}))


def test_distinct_views_may_not_multiply_one_storage(tmp_path):
    storage = Storage("0", 64)
    root = Module(a=View(storage, (8, 8), (8, 1)), b=View(storage, (8, 8), (1, 8)))  # the same bytes, twice
    with pytest.raises(CheckpointError, match="tensors claim 512 bytes but their storages hold 256"):
        read_torchscript_state(write_archive(tmp_path / "alias.jit", root, {"0": floats(64)}))


def test_the_same_view_under_two_names_is_read_once(tmp_path):
    view = View(Storage("0", 64), (64,), (1,))
    state = read_torchscript_state(write_archive(tmp_path / "tied.jit", Module(a=view, b=view), {"0": floats(64)}))
    assert state["a"] is state["b"]


@pytest.mark.parametrize("size, stride, offset, match", [
    ((-1,), (1,), 0, "size holds a value that is not a non-negative integer"),
    ((1 << 62,), (1,), 0, "size holds a value that is not a non-negative integer"),
    ((4,), (1,), -1, "offset is not a non-negative integer"),
    ((4, 4), (1,), 0, "2 sizes but 1 strides"),
    ((1,) * 17, (1,) * 17, 0, "at most 16 integers"),
    ([4], [1], 0, "size is not a tuple"),
])
def test_malformed_tensor_geometry_is_refused(tmp_path, size, stride, offset, match):
    root = Module(weight=View(Storage("0", 4), size, stride, offset))
    with pytest.raises(CheckpointError, match=match):
        read_torchscript_state(write_archive(tmp_path / "geom.jit", root, {"0": floats(4)}))


# --- module graph bounded ------------------------------------------------------------------------------------


def _shared_chain(depth: int, leaf: Any) -> Module:
    """A chain of ``depth`` modules, each holding its child twice: 2**depth paths in a few bytes per level."""
    node = leaf
    for _ in range(depth):
        node = Module(a=node, b=node)
    return node


def test_shared_child_graph_is_cut_at_the_visit_limit(tmp_path):
    # 20 levels, each child shared twice: ~1 M module paths, each ending in the same tensor.
    leaf = Module(weight=View(Storage("0", 4), (4,), (1,)))
    path = write_archive(tmp_path / "dag.jit", _shared_chain(20, leaf), {"0": floats(4)})
    assert path.stat().st_size < 4096
    with peak_memory_grows_less_than(64), pytest.raises(CheckpointError, match="more than 10000 module visits"):
        read_torchscript_state(path)


def test_deep_shared_graph_is_cut_at_the_depth_limit(tmp_path):
    path = write_archive(tmp_path / "deep.jit", _shared_chain(40, Module(x=View(Storage("0", 1), (1,), (1,)))),
                         {"0": floats(1)})
    with peak_memory_grows_less_than(64), pytest.raises(CheckpointError, match="nested more than 32 deep"):
        read_torchscript_state(path)


def test_a_module_cycle_is_refused(tmp_path):
    root = Module(weight=View(Storage("0", 1), (1,), (1,)))
    root.attributes["self"] = root
    with pytest.raises(CheckpointError, match="nested more than 32 deep"):
        read_torchscript_state(write_archive(tmp_path / "cycle.jit", root, {"0": floats(1)}))


def test_too_many_tensors_are_refused(tmp_path):
    view = View(Storage("0", 1), (1,), (1,))
    root = Module(**{f"t{i}": view for i in range(torchscript.MAX_TENSORS + 1)})
    with pytest.raises(CheckpointError, match="more than 10000 tensors"):
        read_torchscript_state(write_archive(tmp_path / "many.jit", root, {"0": floats(1)}))


def test_an_overlong_attribute_name_is_refused(tmp_path):
    root = Module(**{"w" * 300: View(Storage("0", 1), (1,), (1,))})
    with pytest.raises(CheckpointError, match="no name of 1..256 chars"):
        read_torchscript_state(write_archive(tmp_path / "name.jit", root, {"0": floats(1)}))


# --- decompressed bytes bounded ------------------------------------------------------------------------------


def test_compressed_data_record_is_refused_before_decompressing(tmp_path):
    # 16 MiB of zeros deflates to ~16 KB; the same trick at 4.6 GB fits in 2 MB. torch.jit.save never compresses.
    n = 4 << 20
    root = Module(weight=View(Storage("0", n), (n,), (1,)))
    path = write_archive(tmp_path / "bomb.jit", root, {"0": bytes(4 * n)}, compress={"data/0"})
    assert path.stat().st_size < 64 << 10
    with peak_memory_grows_less_than(8), pytest.raises(CheckpointError, match=r"archive/data/0 is compressed.*zip -0"):
        read_torchscript_state(path)


def test_compressed_data_pkl_is_refused(tmp_path):
    root = Module(weight=View(Storage("0", 1), (1,), (1,)))
    with pytest.raises(CheckpointError, match="archive/data.pkl is compressed"):
        read_torchscript_state(write_archive(tmp_path / "pkl.jit", root, {"0": floats(1)}, compress={"data.pkl"}))


@pytest.mark.parametrize("declared, stored", [(1 << 40, 16), (4, 24), (4, 12)], ids=["huge", "longer", "shorter"])
def test_record_size_must_match_the_declared_storage(tmp_path, declared, stored):
    root = Module(weight=View(Storage("0", declared), (1,), (1,)))
    with pytest.raises(CheckpointError, match=rf"storage 0 declares {declared} .* its record holds {stored} bytes"):
        read_torchscript_state(write_archive(tmp_path / "size.jit", root, {"0": bytes(stored)}))


def test_storage_limits_per_record_and_in_total(tmp_path, monkeypatch):
    root = Module(a=View(Storage("0", 64), (64,), (1,)), b=View(Storage("1", 64), (64,), (1,)))
    path = write_archive(tmp_path / "big.jit", root, {"0": floats(64), "1": floats(64)})
    monkeypatch.setattr(torchscript, "MAX_RECORD_BYTES", 255)
    with pytest.raises(CheckpointError, match=r"data/0 declares 256 bytes \(limit 255\)"):
        read_torchscript_state(path)
    monkeypatch.setattr(torchscript, "MAX_RECORD_BYTES", 256)
    monkeypatch.setattr(torchscript, "MAX_TOTAL_BYTES", 511)
    with pytest.raises(CheckpointError, match="storages exceed 511 bytes in all"):
        read_torchscript_state(path)
    monkeypatch.setattr(torchscript, "MAX_TOTAL_BYTES", 512)
    assert set(read_torchscript_state(path)) == {"a", "b"}


def test_data_pkl_size_is_limited(tmp_path, monkeypatch):
    path = write_archive(tmp_path / "pkl.jit", Module(note="x" * 2000))
    monkeypatch.setattr(torchscript, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(CheckpointError, match=r"data.pkl declares \d+ bytes \(limit 1000\)"):
        read_torchscript_state(path)


def test_invalid_bool_bytes_are_refused(tmp_path):
    root = Module(mask=View(Storage("0", 4, torch.BoolStorage), (4,), (1,)))
    with pytest.raises(CheckpointError, match="bool storage 0 holds bytes other than 0 and 1"):
        read_torchscript_state(write_archive(tmp_path / "bool.jit", root, {"0": bytes([0, 1, 7, 0])}))


# --- the unpickler builds nothing but placeholders -----------------------------------------------------------


def _pickle_with(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _tuple_bomb_key(depth: int) -> bytes:
    """``{t: 1}`` with t = (t', t') nested ``depth`` deep, written by hand: hashing t visits 2**depth tuples."""
    key = b")q\x000" + b"".join((b"h" + bytes([i - 1])) * 2 + b"\x86q" + bytes([i]) + b"0" for i in range(1, depth + 1))
    return b"\x80\x02}" + key + b"h" + bytes([depth]) + b"K\x01s."


@pytest.mark.parametrize("pkl, match", [
    (_pickle_with(print), r"imports __builtin__\.print"),
    (_pickle_with(torch.zeros), r"imports __builtin__\.getattr"),
    (b"\x80\x02cos\nsystem\n.", r"imports os\.system"),
    (b"\x80\x02ctorch._utils\n_rebuild_qtensor\n.", "imports torch._utils._rebuild_qtensor"),
    (_tuple_bomb_key(60), "a dict key is a tuple"),
    (pickle.dumps({1, 2}, protocol=4), "opcode EMPTY_SET is not allowed"),
    (b"\x80\x02(ccollections\nOrderedDict\no.", "opcode OBJ is not allowed"),
    (b"\x80\x02\x82\x01\x00", "opcode EXT1 is not allowed"),
    (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "NEWOBJ on a function"),
    (b"\x80\x02}}b.", "BUILD on a dict"),
])
def test_the_unpickler_refuses_everything_but_module_data(tmp_path, pkl, match):
    with pytest.raises(CheckpointError, match=match):
        read_torchscript_state(write_archive(tmp_path / "evil.jit", pkl=pkl))


def test_no_state_can_be_set_on_a_tensor(tmp_path):
    # BUILD on a real tensor calls Tensor.__setstate__ -> set_(storage, offset, size, stride), which can resize
    # a storage to any size; here tensors are placeholders and BUILD on them is refused.
    storage = Storage("0", 0)
    root = Module(weight=View(storage, (0,), (1,), state=(storage, 0, (1 << 30,), (1,))))
    with peak_memory_grows_less_than(64), pytest.raises(CheckpointError, match="BUILD on a TensorRef"):
        read_torchscript_state(write_archive(tmp_path / "setstate.jit", root, {"0": b""}))


def test_the_fixture_files_are_well_inside_the_limits(fixtures):
    for name in ("encoder.jit", "decoder.jit"):
        with zipfile.ZipFile(fixtures / name) as zf:
            pkl = next(i for i in zf.infolist() if i.filename.endswith("/data.pkl"))
            data = [i for i in zf.infolist() if "/data/" in i.filename]
        assert pkl.file_size * 20 < torchscript.MAX_PICKLE_BYTES
        assert all(i.compress_type == zipfile.ZIP_STORED for i in data + [pkl])
        assert len(read_torchscript_state(fixtures / name)) * 20 < torchscript.MAX_TENSORS
