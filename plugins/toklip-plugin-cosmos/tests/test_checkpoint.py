"""Loading failures are CheckpointErrors that say what is wrong; TorchScript archives are read, never executed."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from toklip import CheckpointError
from toklip_plugin_cosmos.model import build_cosmos
from toklip_plugin_cosmos.torchscript import is_torchscript_archive, read_torchscript_state

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = FIXTURES / "config.json"


def test_reader_lists_weights_and_buffers():
    enc = read_torchscript_state(FIXTURES / "encoder.jit")
    dec = read_torchscript_state(FIXTURES / "decoder.jit")
    assert is_torchscript_archive(FIXTURES / "encoder.jit")
    assert {k.split(".")[0] for k in enc} == {"encoder", "quant_conv", "quantizer"}
    assert {k.split(".")[0] for k in dec} == {"post_quant_conv", "decoder", "inv_quant"}
    assert "encoder.patcher.wavelets" in enc and "inv_quant.quantizer._levels" in dec
    assert enc["quant_conv.weight"].shape == (6, 16, 1, 1) and enc["quant_conv.weight"].dtype == torch.float32


def test_encoder_file_alone_misses_the_decoder():
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): decoder\."):
        build_cosmos(config=CONFIG, checkpoint=FIXTURES / "encoder.jit")


def test_wrong_architecture_is_reported():
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build_cosmos(config=CONFIG, z_channels=32, checkpoint=[FIXTURES / "encoder.jit", FIXTURES / "decoder.jit"])
    with pytest.raises(CheckpointError, match="unexpected"):
        build_cosmos(config=CONFIG, num_res_blocks=1, checkpoint=[FIXTURES / "encoder.jit", FIXTURES / "decoder.jit"])


def test_folder_without_weights(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(CheckpointError, match="encoder.jit \\+ decoder.jit, autoencoder.jit or model.safetensors"):
        build_cosmos(config=CONFIG, checkpoint=tmp_path)


def test_conflicting_files(tmp_path):
    from safetensors.torch import save_file

    state = read_torchscript_state(FIXTURES / "encoder.jit")
    save_file({"quant_conv.bias": state["quant_conv.bias"] + 1}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="quant_conv.bias differs"):
        build_cosmos(config=CONFIG, checkpoint=[FIXTURES / "encoder.jit", FIXTURES / "decoder.jit",
                                               tmp_path / "other.safetensors"])


def test_truncated_archive(tmp_path):
    data = (FIXTURES / "decoder.jit").read_bytes()
    (tmp_path / "decoder.jit").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        build_cosmos(config=CONFIG, checkpoint=[FIXTURES / "encoder.jit", tmp_path / "decoder.jit"])


def test_missing_storage_is_reported(tmp_path):
    src, dst = FIXTURES / "encoder.jit", tmp_path / "encoder.jit"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename != "encoder/data/2":
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(CheckpointError, match="storage 2 is missing"):
        read_torchscript_state(dst)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (shutil.copy, (str(CONFIG), str(self.marker)))


def test_pickled_code_in_an_archive_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    pickle.dump({"encoder": _Payload(marker)}, buf, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil.jit", "w") as zf:
        zf.writestr("evil/data.pkl", buf.getvalue())
        zf.writestr("evil/code/__torch__/x.py", "def forward(self): pass\n")
    with pytest.raises(CheckpointError, match=r"the pickle imports shutil\.copy"):
        read_torchscript_state(tmp_path / "evil.jit")
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        build_cosmos(config=CONFIG, checkpoint=tmp_path / "evil.jit")
    assert not marker.exists()


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        build_cosmos(variant="test", checkpoint="/nonexistent/autoencoder.jit")
