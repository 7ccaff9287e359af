"""``--format webdataset`` (tar shards: the array format's indices, read back by TokenDataset and by a plain
webdataset pipeline, resumable byte for byte) and ``--features tokens`` (the size estimate, and the refusals that
keep it from filling a disk)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

import toklip
from toklip.core.errors import ConfigError
from toklip.data.token_dataset import TokenDataset
from toklip.tokenize.budget import SizeEstimate, check_budget, parse_features

from .conftest import make_class_folders, make_folder, make_shards, run, shard_bytes

wds = pytest.importorskip("webdataset", reason="the readers need the train extra: pip install 'toklip[train]'")


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_webdataset_shards_hold_the_array_formats_indices_and_labels(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)
    run(src, tmp_path / "arr", shard_size=4, augment="flip")
    run(src, tmp_path / "wds", shard_size=4, augment="flip", output_format="webdataset")
    m = manifest(tmp_path / "wds")
    assert m["output_format"] == "webdataset" and manifest(tmp_path / "arr")["output_format"] == "array"
    assert [sh["tar_file"] for sh in m["shards"]] == ["shards/00000.tar", "shards/00001.tar"]
    assert not list((tmp_path / "wds" / "shards").glob("*.npy"))
    arr, tar = TokenDataset(tmp_path / "arr"), TokenDataset(tmp_path / "wds", view=1)
    assert len(tar) == len(arr) == 6
    for i in range(6):
        assert np.array_equal(tar.tokens(i), arr.tokens(i)) and tar.tokens(i).dtype == np.uint16
        assert tar[i]["label"] == arr[i]["label"] and tar.key(i) == arr.key(i)
        assert torch.equal(tar[i]["indices"], torch.from_numpy(arr.tokens(i)[1].astype(np.int64)))
    assert np.array_equal(tar.array(1), arr.array(1))  # whole-shard reads (stats) too

    # a plain webdataset pipeline streams the same samples
    urls = [str(tmp_path / "wds" / sh["tar_file"]) for sh in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples[:2]] == ["00000_0000000", "00000_0000001"]
    assert all(np.array_equal(s["indices.npy"], arr.tokens(i)) for i, s in enumerate(samples))
    assert [s["cls"] for s in samples] == [0, 0, 0, 1, 1, 1]
    assert [s["json"]["key"] for s in samples] == [arr.key(i) for i in range(6)]


def test_webdataset_keeps_captions_and_skips_nothing_silently(tmp_path):
    src = make_folder(tmp_path / "in", 3)
    run(src, tmp_path / "out", output_format="webdataset")
    ds = TokenDataset(tmp_path / "out")
    assert [ds[i]["caption"] for i in range(3)] == [f"caption {i}" for i in range(3)]
    with tarfile.open(tmp_path / "out" / "shards" / "00000.tar") as t:
        names = t.getnames()
    assert names[:4] == ["00000_0000000.indices.npy", "00000_0000000.json", "00000_0000000.txt",
                         "00000_0000001.indices.npy"]


def test_webdataset_rerun_redoes_a_half_written_shard_byte_for_byte(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)
    run(src, tmp_path / "ref", shard_size=2, output_format="webdataset")
    out = tmp_path / "out"
    run(src, out, shard_size=2, output_format="webdataset")
    (out / "shards" / "00001.json").unlink()  # killed between the tar and its record
    (out / "shards" / ".00001.tar.x.tmp").write_bytes(b"stale temporary file")
    s = run(src, out, shard_size=2, output_format="webdataset")
    assert (s.shards_written, s.shards_skipped) == (1, 2)
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
    with pytest.raises(ConfigError, match="output_format"):  # never mixes formats in one folder
        run(src, out, shard_size=2)


def test_size_estimate_is_images_views_tokens_dims_times_two():
    est = SizeEstimate(images=1000, views=10, tokens=256, index_bytes=2, kinds=("tokens",), token_dim=768)
    assert est.token_feature_bytes_per_image == 10 * 256 * 768 * 2
    assert est.token_features_total == 1000 * 10 * 256 * 768 * 2
    assert est.per_image == 10 * 256 * 2 + 10 * 256 * 768 * 2
    assert "1,000 images x 10 views x 256 tokens x 768 dims x 2 bytes (fp16) = 3.93 GB" in est.describe()
    both = SizeEstimate(images=3, views=2, tokens=16, index_bytes=4, kinds=("pooled", "tokens"), pooled_dim=32,
                        token_dim=64)
    assert both.total == 3 * (2 * 16 * 4 + 2 * 32 * 2 + 2 * 16 * 64 * 2)
    assert parse_features("tokens,pooled") == ("pooled", "tokens") and parse_features("none") == ()
    with pytest.raises(ConfigError, match="not one of"):
        parse_features("pixels")


def test_budget_refusals(tmp_path, monkeypatch):
    est = SizeEstimate(images=100, views=1, tokens=16, index_bytes=2, kinds=("tokens",), token_dim=64)
    with pytest.raises(ConfigError, match="pass --yes"):
        check_budget(est, max_bytes=None, confirmed=False, out=tmp_path, pending_images=100)
    with pytest.raises(ConfigError, match="more than --max-bytes"):
        check_budget(est, max_bytes=est.total - 1, confirmed=True, out=tmp_path, pending_images=100)
    check_budget(est, max_bytes=est.total, confirmed=False, out=tmp_path, pending_images=100)
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 10, 10))
    with pytest.raises(ConfigError, match="10 B free"):
        check_budget(est, max_bytes=None, confirmed=True, out=tmp_path / "new" / "out", pending_images=100)


def model_spec():
    from toklip.tokenize.encode import TokenizerSpec

    return TokenizerSpec("model", "toklip-test", None, {}, 0)


def test_per_token_features_need_yes_or_a_bound_and_print_the_estimate_first(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=1)
    said = []
    with pytest.raises(ConfigError, match="--features tokens writes .* pass --yes"):
        run(src, tmp_path / "out", spec=model_spec(), size=None, features="tokens", echo=said.append)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="more than --max-bytes"):
        run(src, tmp_path / "out", spec=model_spec(), size=None, features="tokens", max_bytes=1000)
    run(src, tmp_path / "out", spec=model_spec(), size=None, features="tokens", augment="flip",
        confirm_features=True, echo=said.append)
    assert any("2 images x 2 views x 64 tokens x" in s for s in said)
    m = manifest(tmp_path / "out")
    dim = m["features"]["tokens"]["dim"]
    feats = np.load(tmp_path / "out" / m["shards"][0]["features_file"])
    assert feats.dtype == np.float16 and feats.shape == (2, 2, 64, dim)
    ds = TokenDataset(tmp_path / "out", with_features=True, view=1)
    torch.manual_seed(0)
    model = toklip.build("toklip-test").eval()
    with torch.no_grad():
        expected = model.tokenize_indices(ds[1]["indices"][None]).features[0]
    assert torch.allclose(ds[1]["features"], expected, atol=2e-3, rtol=2e-3)
    with pytest.raises(ConfigError, match="no pooled features"):
        TokenDataset(tmp_path / "out", with_pooled=True)


def test_per_token_features_in_webdataset_shards_match_the_array_format(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=1)
    common = dict(spec=model_spec(), size=None, features="pooled,tokens", confirm_features=True)
    run(src, tmp_path / "arr", **common)
    run(src, tmp_path / "wds", output_format="webdataset", **common)
    a = TokenDataset(tmp_path / "arr", with_features=True, with_pooled=True)
    b = TokenDataset(tmp_path / "wds", with_features=True, with_pooled=True)
    for i in range(2):
        assert all(torch.equal(a[i][k], b[i][k]) for k in ("indices", "pooled", "features"))


def test_unknown_size_inputs_stop_at_max_bytes_with_finished_shards_intact(tmp_path):
    make_shards(tmp_path / "in", 4, per_shard=2)
    src = str(tmp_path / "in" / "{00000..00001}.tar")
    per_shard = 2 * 16 * 2  # 2 images x 16 tokens x uint16
    with pytest.raises(ConfigError, match="over --max-bytes"):
        run(src, tmp_path / "out", max_bytes=per_shard)
    assert (tmp_path / "out" / "shards" / "00000.json").is_file()
    assert not (tmp_path / "out" / "shards" / "00001.json").exists()
    s = run(src, tmp_path / "out", max_bytes=2 * per_shard)
    assert (s.shards_written, s.shards_skipped) == (1, 1) and manifest(tmp_path / "out")["counts"]["images"] == 4
