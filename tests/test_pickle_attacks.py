"""Hostile ``.pt`` files, built here opcode by opcode, are refused; the numpy numbers official files hold still load.

The numpy attacks run in a child process: with an allowlist that lets numpy build dtypes, touching the loaded
object segfaults, which must show up as a failed test rather than a dead pytest.
"""

from __future__ import annotations

import ast
import io
import json
import pickle
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from toklip.weights import read_checkpoint
from toklip.core.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]

# -- protocol-2 pickle fragments (what torch.save writes and torch's weights-only unpickler reads) ---------------
NONE, FALSE, TRUE = b"N", b"\x89", b"\x88"


def _str(s: str) -> bytes:
    data = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def _dict(*pairs: bytes) -> bytes:
    return b"}(" + b"".join(pairs) + b"u"


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _tuple(*args) + b"R"


def _bytes(data: bytes) -> bytes:  # protocol 2 spells bytes as _codecs.encode(latin-1 text, 'latin1')
    return _call(_global("_codecs", "encode"), _str(data.decode("latin1")), _str("latin1"))


def _dtype(spec: bytes | str) -> bytes:
    return _call(_global("numpy", "dtype"), _str(spec) if isinstance(spec, str) else spec, FALSE, TRUE)


def _state(byteorder="<", subarray=NONE, names=NONE, fields=NONE, elsize=-1, align=-1, flags=0, version=3, extra=()):
    return _tuple(_int(version), _str(byteorder), subarray, names, fields, _int(elsize), _int(align), _int(flags),
                  *extra)


def _built(dtype: bytes, state: bytes) -> bytes:
    return dtype + state + b"b"  # BUILD: numpy's dtype.__setstate__


def _scalar(dtype: bytes, data: bytes, module: str = "numpy.core.multiarray") -> bytes:
    return _call(_global(module, "scalar"), dtype, _bytes(data))


def _pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


# -- containers ------------------------------------------------------------------------------------------------
def _as_zip(pkl: bytes, path: Path) -> Path:
    """A torch.save zip archive whose data.pkl is ``pkl``."""
    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, pkl if info.filename.endswith("/data.pkl") else src.read(info.filename))
    return path


def _as_legacy(pkl: bytes, path: Path) -> Path:
    """A legacy (pre-1.6) torch.save file whose object pickle is ``pkl``."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = [torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION, sys_info]
    path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in head) + pkl + pickle.dumps([], protocol=2))
    return path


CONTAINERS = {"zip": _as_zip, "legacy": _as_legacy}

# -- the attacks -------------------------------------------------------------------------------------------------
# A float64 dtype re-BUILT to claim an object sub-array; inside a structured dtype it makes a numpy.void whose
# 8 payload bytes are read as a PyObject pointer (0x4141... here: touching it segfaults).
_OBJECT_SUBARRAY = _built(_dtype("f8"), _state("|", subarray=_tuple(_dtype("O8"), _tuple(b"K\x01")), elsize=8, align=8))
_POINTER = struct.pack("<Q", 0x4141414141414141)
ATTACKS = {
    "void_with_object_pointer": _scalar(_dtype(_list(_tuple(_str("a"), _OBJECT_SUBARRAY))), _POINTER),
    "object_subarray_state": _scalar(_OBJECT_SUBARRAY, _POINTER),
    "object_dtype": _scalar(_dtype("O8"), _POINTER),
    "void_dtype": _scalar(_dtype("V8"), _POINTER),
    "structured_dtype": _scalar(_dtype(_list(_tuple(_str("a"), _str("f8")))), bytes(8)),
    "field_state": _scalar(_built(_dtype("f8"), _state(
        "|", names=_tuple(_str("a")), fields=_dict(_str("a"), _tuple(_dtype("O8"), b"K\x00")), elsize=8, align=1,
        flags=27)), _POINTER),
    "object_flags_state": _scalar(_built(_dtype("f8"), _state("<", flags=63)), bytes(8)),
    "metadata_state": _scalar(_built(_dtype("f8"), _state("<", version=4, extra=(_dict(),))), bytes(8)),
    "short_payload": _scalar(_built(_dtype("f8"), _state("<")), bytes(4)),
    "string_as_dtype": _call(_global("numpy.core.multiarray", "scalar"), _str("f8"), _bytes(bytes(8))),
    "bare_dtype": _dict(_str("lr"), _built(_dtype("f8"), _state("<"))),
}


def _zip_bomb(path: Path, mib: int = 256) -> Path:
    """A torch.save-shaped archive whose one tensor record inflates ``mib`` MiB of zeros from ~1 KiB per MiB,
    with sizes, CRC and the pickle's declared storage all consistent (a reader that inflates it allocates it)."""
    chunk = bytes(1 << 20)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as in zip records
    z.compress(chunk)
    z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH)  # after a full flush each MiB is the same bytes
    assert z.compress(chunk) + z.flush(zlib.Z_FULL_FLUSH) == block
    deflated = block * mib + z.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    numel = mib * (1 << 20) // 4
    storage = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu") + _int(numel) + b"tQ"
    tensor = _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, b"K\x00", _tuple(_int(numel)),
                   _tuple(b"K\x01"), FALSE, _call(_global("collections", "OrderedDict")))
    records = [("bomb/data.pkl", _pickle(_dict(_str("w"), tensor)), 0, None),
               ("bomb/byteorder", b"little", 0, None), ("bomb/version", b"3\n", 0, None),
               ("bomb/data/0", deflated, 8, (crc, mib << 20))]
    out, central = bytearray(), bytearray()
    for name, payload, method, declared in records:
        crc_i, size = declared or (zlib.crc32(payload), len(payload))
        fields = (20, 0, method, 0, 0, crc_i, len(payload), size, len(name), 0)
        central += struct.pack("<IH", 0x02014B50, 20) + struct.pack("<HHHHHIIIHH", *fields) + struct.pack(
            "<HHHII", 0, 0, 0, 0, len(out)) + name.encode()
        out += struct.pack("<I", 0x04034B50) + struct.pack("<HHHHHIIIHH", *fields) + name.encode() + payload
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central),
                                 len(out), 0)
    path.write_bytes(bytes(out))
    return path


# The child loads each file, touches the result (repr) and reports one JSON line; ru_maxrss is in KiB on Linux.
_CHILD = r"""
import json, resource, sys
from toklip.weights import read_checkpoint
from toklip.core.errors import CheckpointError
for path in sys.argv[1:]:
    print(json.dumps({"start": path}), flush=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        outcome, text = "loaded", repr(read_checkpoint(path))
    except CheckpointError as e:
        outcome, text = "refused", str(e)
    except Exception as e:
        outcome, text = "error", f"{type(e).__name__}: {e}"
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"path": path, "outcome": outcome, "text": text[:2000], "grew_kib": grew}), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    """Every hostile file loaded in child processes: {case: {'outcome', 'text', 'grew_kib'}}; a crash is an outcome."""
    d = tmp_path_factory.mktemp("hostile")
    files = {"zip_bomb": _zip_bomb(d / "bomb.pt")}
    for case, body in ATTACKS.items():
        for container, wrap in CONTAINERS.items():
            files[f"{case}-{container}"] = wrap(_pickle(body), d / f"{case}-{container}.pt")
    case_of = {str(p): c for c, p in files.items()}
    results: dict[str, dict] = {}
    todo = list(case_of)
    while todo:
        run = subprocess.run([sys.executable, "-c", _CHILD, *todo], capture_output=True, text=True, timeout=300,
                             cwd=REPO)
        started = None
        for line in run.stdout.splitlines():
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                results[case_of[msg["path"]]] = msg
                started = None
        if started is not None:  # the child died inside this file
            results[case_of[started]] = {"outcome": f"crashed (exit {run.returncode})", "text": run.stderr[-2000:]}
        elif run.returncode != 0 and not results:
            pytest.fail(f"child failed before any file: {run.stderr[-2000:]}")
        todo = [p for p in todo if case_of[p] not in results]
    return results


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("case", ATTACKS)
def test_numpy_forgeries_are_refused(outcomes, case, container):
    got = outcomes[f"{case}-{container}"]
    assert got["outcome"] == "refused", got
    assert re.search(r"refused to load .*(numpy|dtype)", got["text"]), got["text"]
    assert "never unpickles arbitrary objects" in got["text"]


def test_zip_bomb_is_refused_without_inflating(outcomes):
    got = outcomes["zip_bomb"]
    assert got["outcome"] == "refused", got
    assert "compressed zip records" in got["text"] and "nothing was decompressed" in got["text"]
    assert got["grew_kib"] < 64 * 1024, f"peak memory grew {got['grew_kib'] / 1024:.0f} MiB for a 256 MiB bomb"


# -- what official files need still loads, as plain Python numbers ----------------------------------------------
def _numpy_numbers_checkpoint(path: Path, *, legacy: bool, numpy1: bool) -> dict:
    """A training-checkpoint-like file whose optimizer state holds numpy scalars (as the official schedule did)."""
    group = {"lr": np.float64(1e-5), "momentum": np.float32(0.5), "half": np.float16(0.25), "step": np.int64(-7),
             "count": np.uint8(200), "warm": np.bool_(True), "params": [0]}
    obj = {"epoch": 32, "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "optimizer": {"param_groups": [group]}}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    new, old = b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"
    if numpy1:  # the released files were pickled under numpy 1
        if legacy:
            path.write_bytes(path.read_bytes().replace(new, old))
        else:
            with zipfile.ZipFile(path) as src:
                records = [(i, src.read(i.filename)) for i in src.infolist()]
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
                for info, data in records:
                    dst.writestr(info, data.replace(new, old))
    assert (old if numpy1 else new) in path.read_bytes()
    return group


@pytest.mark.parametrize("numpy1", [True, False], ids=["numpy1", "numpy2"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_numpy_numbers_load_as_python_numbers(tmp_path, legacy, numpy1):
    group = _numpy_numbers_checkpoint(tmp_path / "ckpt.pt", legacy=legacy, numpy1=numpy1)
    loaded = read_checkpoint(tmp_path / "ckpt.pt")
    got = loaded["optimizer"]["param_groups"][0]
    want_types = {"lr": float, "momentum": float, "half": float, "step": int, "count": int, "warm": bool}
    assert {k: type(got[k]) for k in want_types} == want_types
    assert all(got[k] == group[k].item() for k in want_types)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_hand_pickled_scalars_of_either_byte_order(tmp_path, module):
    body = _dict(_str("le"), _scalar(_built(_dtype("f8"), _state("<")), struct.pack("<d", 1e-5), module),
                 _str("be"), _scalar(_built(_dtype("f8"), _state(">")), struct.pack(">d", 2.5e-4), module),
                 _str("b"), _scalar(_built(_dtype("b1"), _state("|")), b"\x01", module))
    assert read_checkpoint(_as_zip(_pickle(body), tmp_path / "x.pt")) == {"le": 1e-5, "be": 2.5e-4, "b": True}


# -- compressed zip records --------------------------------------------------------------------------------------
def _repack(src: Path, dst: Path, compression: int, only_tensors: bool = False) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            packed = compression if (not only_tensors or "/data/" in info.filename) else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=packed)
    return dst


@pytest.mark.parametrize("only_tensors", [False, True], ids=["all-records", "tensor-records"])
def test_deflated_checkpoint_is_refused_not_loaded_as_garbage(tmp_path, only_tensors):
    tensors = {"w": torch.randn(64, 32, generator=torch.Generator().manual_seed(0)), "b": torch.arange(10)}
    torch.save({"state_dict": tensors}, tmp_path / "ok.pt")
    bad = _repack(tmp_path / "ok.pt", tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED, only_tensors)
    with pytest.raises(CheckpointError, match=r"compressed zip records .*deflate.*ZIP_STORED"):
        read_checkpoint(bad)
    # the fix the message gives works: the same records re-packed uncompressed load bit for bit
    again = read_checkpoint(_repack(bad, tmp_path / "stored.pt", zipfile.ZIP_STORED))["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in tensors.items()) and set(again) == set(tensors)


# -- other things a .pt file can be ------------------------------------------------------------------------------
def test_newer_pickle_protocol_is_refused_naming_the_opcodes(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "p4.pt", pickle_protocol=4)
    with pytest.raises(CheckpointError, match=r"refused to load .*opcodes .*FRAME"):
        read_checkpoint(tmp_path / "p4.pt")


def test_declared_giant_string_is_refused_without_allocating(tmp_path):
    """A pickle declaring a 2**62-byte string: judged by what the file holds, not allocated (was a MemoryError)."""
    path = _as_legacy(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc", tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match="truncated or corrupt pickle data"):
        read_checkpoint(path)


def test_duplicate_records_are_refused(tmp_path):
    path = _as_zip(_pickle(_dict()), tmp_path / "dup.pt")
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr(zf.infolist()[0].filename, b"\x80\x02}.")
    with pytest.raises(CheckpointError, match="appears twice"):
        read_checkpoint(path)


def _load_calls(source: str) -> list[int]:
    """Lines calling torch.load, torch.jit.load, pickle/dill/joblib load(s) (real calls, not docstrings)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr in ("load", "loads"):
            owner = ast.unparse(func.value)
            if owner in ("torch", "torch.jit", "jit", "pickle", "dill", "joblib", "cloudpickle"):
                lines.append(node.lineno)
    return lines


def test_no_reader_bypasses_read_checkpoint():
    """Every checkpoint reader goes through read_checkpoint: torch.load and pickle loads appear nowhere else."""
    allowed = {"toklip/weights/torch_pickle.py", "toklip/testing/conformance.py"}  # the latter reloads its own buffer
    sources = [*REPO.glob("toklip/**/*.py"), *REPO.glob("plugins/*/src/**/*.py")]
    assert _load_calls("import torch\ntorch.load(f, weights_only=True)\n") == [2]
    hits = [f"{p.relative_to(REPO)}:{n}" for p in sources if str(p.relative_to(REPO)) not in allowed
            for n in _load_calls(p.read_text())]
    assert len(sources) > 20 and not hits, f"read checkpoints with toklip.weights.read_checkpoint: {hits}"
