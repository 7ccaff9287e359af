"""Bad input gets a clear toklip error naming the problem and the fix; nothing else happens."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

import toklip
from toklip.weights import read_checkpoint
from toklip.core.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def model():
    return toklip.build("toklip-test")


def ok_images(b=1):
    return torch.rand(b, 3, 64, 64) * 2 - 1


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(3, 64, 64), r"4 dimensions .*add a batch dimension"),
        (torch.rand(1, 1, 64, 64), "3 channels"),
        (torch.rand(1, 64, 64, 3), r"3 channels .*channels-last\? use images.permute"),
        ((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8), "floating point .*uint8"),
        (torch.rand(1, 3, 64, 64) * 255, r"\[-1, 1\].*looks like 0..255 pixels"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or infinite"),
        (torch.rand(1, 3, 60, 60) * 2 - 1, "not a multiple of the VQ downsample factor 8"),
        (torch.rand(1, 3, 72, 72) * 2 - 1, r"72x72, but this model takes 64x64 .*model.preprocess"),
        (torch.rand(0, 3, 64, 64), "empty batch"),
        ("cat.png", "must be a torch.Tensor .*model.preprocess"),
    ],
)
def test_bad_images(model, bad, match):
    with pytest.raises(InputError, match=match):
        model.tokenize(bad)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.full((1, 64), 1024), r"indices must lie in \[0, 1023\] .*got \[1024, 1024\]"),
        (torch.full((1, 64), -1), r"got \[-1, -1\]"),
        (torch.zeros(1, 63, dtype=torch.long), "63 tokens per image, but this model's grid is 8x8"),
        (torch.zeros(1, 4, 4, dtype=torch.long), r"grid \(4, 4\) does not match this model's grid \(8, 8\)"),
        (torch.zeros(1, 64), "integer tensor"),
        (torch.zeros(64, dtype=torch.long), r"shape \[B, N\] or \[B, h, w\]"),
    ],
)
def test_bad_indices(model, bad, match):
    with pytest.raises(InputError, match=match):
        model.decode(bad)


def test_bad_token_ids(model):
    with pytest.raises(InputError, match="length 10, but the text tower takes exactly 16"):
        model.encode_text(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 49407\]"):
        model.encode_text(torch.full((1, 16), 10**6))
    with pytest.raises(InputError, match="integer tensor"):
        model.encode_text(torch.zeros(1, 16))


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"", "empty"),
        (b"this is not an image", "not an image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not an image format|could not be decoded"),
    ],
)
def test_bad_image_files(model, payload, match):
    with pytest.raises(InputError, match=match):
        model.preprocess(payload)


def test_truncated_png(model, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    with pytest.raises(InputError, match="could not be decoded|truncated"):
        model.preprocess(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_decompression_bomb_is_refused(model):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # tiny file, 400 M pixels
    with pytest.raises(InputError, match="decompression-bomb guard|too large"):
        model.preprocess(buf.getvalue())


# ----------------------------------------------------------------- checkpoints
class WritesAFile:
    """A pickle whose loading would run code (create a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("container", ["plain-pickle", "torch-legacy", "zip"])
def test_pickle_with_code_is_refused_and_nothing_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    payload = {"state_dict": {"x": torch.zeros(1)}, "evil": WritesAFile(str(marker))}
    if container == "plain-pickle":
        ckpt.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, ckpt, _use_new_zipfile_serialization=container == "zip")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load .*never unpickles arbitrary objects"):
        read_checkpoint(ckpt)
    with pytest.raises(CheckpointError):
        toklip.load_official(ckpt)
    assert not marker.exists(), "loading must never execute code from a checkpoint"


def test_truncated_checkpoint(tmp_path, fixtures_dir):
    src = (fixtures_dir / "official-toklip" / "official_state.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src[: len(src) // 3])
    with pytest.raises(CheckpointError, match="not a readable checkpoint|not a valid"):
        read_checkpoint(bad)


def test_truncated_safetensors(tmp_path, fixtures_dir):
    src = (fixtures_dir / "official-toklip" / "official_state.safetensors").read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_checkpoint(bad)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"hello world, not a checkpoint", r"not a zip archive .*not a safetensors file and not a legacy PyTorch "
                                           r"pickle; its first bytes are b'hello world, not'"),
        (np.random.default_rng(0).bytes(4096)[1:], r"not a legacy PyTorch pickle; its first bytes are b'"),
        (b"PK\x03\x04garbage", "starts like a zip archive but the archive is truncated or corrupt"),
        (b"\x80\x02garbage that is no pickle", "truncated or corrupt pickle data"),
        (pickle.dumps({"a": 1, "b": [2.0]}, protocol=2), "is a plain Python pickle, not a PyTorch checkpoint"),
    ],
    ids=["text", "random-bytes", "broken-zip", "broken-pickle", "plain-pickle"],
)
def test_non_checkpoint_files_say_what_was_found(tmp_path, content, match):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        read_checkpoint(f)
    assert "pickled Python objects" not in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        read_checkpoint(tmp_path / "empty.pt")


def test_wrong_architecture_reports_keys_and_shapes(fixtures_dir):
    ckpt = fixtures_dir / "official-toklip" / "official_state.pt"
    with pytest.raises(CheckpointError) as e:
        toklip.load_official(ckpt, config="toklip-test")
    text = str(e.value)
    assert "does not match the model" in text and "shape mismatch" in text
    assert "never loads partially" in text


def test_size_cannot_be_inferred_for_unknown_models(fixtures_dir):
    with pytest.raises(toklip.ConfigError, match="matches no released TokLIP .*pass config="):
        toklip.load_official(fixtures_dir / "official-toklip" / "official_state.pt")


def test_official_training_checkpoint_with_optimizer_and_numpy_scalars(tmp_path, fixtures_dir):
    """The released files are raw training checkpoints: module.-prefixed state_dict + AdamW state whose
    param_groups hold numpy float64 learning rates. They must load with weights_only=True."""
    src = torch.load(fixtures_dir / "official-toklip" / "official_state.pt", weights_only=True)
    state = src["state_dict"]
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
           "param_groups": [{"lr": np.float64(1e-5), "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.1,
                             "params": [0]}]}
    ckpt = tmp_path / "TokLIP_like.pt"
    torch.save({"epoch": 32, "name": "run", "state_dict": state, "optimizer": opt,
                "scaler": {"scale": 65536.0}}, ckpt)
    model = toklip.load_official(ckpt, config=fixtures_dir / "official-toklip" / "config.json")
    assert model.image_size == 64
    # The released files were pickled under numpy 1, which spells the global numpy.core.multiarray.scalar.
    old = tmp_path / "numpy1.pt"
    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            dst.writestr(info, data)
    loaded = read_checkpoint(old)
    lr = loaded["optimizer"]["param_groups"][0]["lr"]
    assert type(lr) is float and lr == 1e-5  # a plain number: numpy never builds anything from the file
    assert toklip.load_official(old, config=fixtures_dir / "official-toklip" / "config.json").image_size == 64


def test_convert_writes_safetensors_and_config(tmp_path, fixtures_dir):
    d = fixtures_dir / "official-toklip"
    from toklip.model.loading import convert_official

    out = convert_official(d / "official_state.pt", tmp_path / "out", config=d / "config.json")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    again = toklip.from_pretrained(out)
    ref = toklip.load_official(d / "official_state.safetensors", config=d / "config.json")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), ref.encode_image(x), rtol=0, atol=0)
