"""``toklip tokenize`` in one process: every input layout, the stored arrays and manifest, the round trip through
TokenDataset, dtype choice, pooled features, skipped images, and resuming after a half-written shard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import toklip
from toklip.core.errors import ConfigError
from toklip.data.token_dataset import TokenDataset
from toklip.weights.identity import state_dict_sha256
from toklip.tokenize.writer import token_dtype

from .conftest import (
    GARBAGE,
    SIZE,
    bomb_png,
    jpeg_bytes,
    make_class_folders,
    make_csv,
    make_folder,
    make_jsonl,
    make_shards,
    run,
    shard_bytes,
    truncated_jpeg,
    vq_spec,
)

pytest.importorskip("webdataset", reason="the readers need the train extra: pip install 'toklip[train]'")


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_class_folders_give_labels_classes_and_the_manifest(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)
    s = run(src, tmp_path / "out", shard_size=4)
    m = manifest(tmp_path / "out")
    assert s.manifest is not None and (s.shards_total, s.shards_written, s.images) == (2, 2, 6)
    assert m["inputs"]["type"] == "class-folder" and m["classes"] == ["cat", "dog"]
    assert m["counts"] == {"images": 6, "skipped": 0, "read": 6, "shards": 2, "sequences": 6}
    assert m["grid"] == [4, 4] and m["tokens_per_image"] == 16 and m["image_size"] == SIZE
    assert m["dtype"] == "uint16" and m["augment"]["name"] == "center" and m["augment"]["variants"] == 1
    assert m["tokenizer"]["name"] == "llamagen-test" and m["tokenizer"]["vocab_size"] == 1024
    assert m["precision"] == {"encoder": "fp32", "distances": "fp32"}
    assert [sh["count"] for sh in m["shards"]] == [4, 2]
    ds = TokenDataset(tmp_path / "out")
    assert len(ds) == 6 and [ds[i]["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert ds.key(4) == "dog/1.jpg" and ds[0]["indices"].dtype == torch.int64
    tokens = np.load(tmp_path / "out" / m["shards"][0]["tokens_file"], mmap_mode="r")
    assert tokens.shape == (4, 1, 16) and tokens.dtype == np.uint16


@pytest.mark.parametrize("layout", ["folder", "csv", "tsv", "jsonl", "webdataset"])
def test_captioned_layouts_keep_captions_in_order(tmp_path, layout):
    n = 5
    if layout == "folder":
        src = make_folder(tmp_path / "in", n, json_every=2)
    elif layout in ("csv", "tsv"):
        src = make_csv(tmp_path / "in", n, sep="," if layout == "csv" else "\t", name=f"data.{layout}")
    elif layout == "jsonl":
        src = make_jsonl(tmp_path / "in", n)
    else:
        make_shards(tmp_path / "in", n, per_shard=2)
        src = str(tmp_path / "in" / "{00000..00002}.tar")
    run(src, tmp_path / "out", shard_size=2)
    m = manifest(tmp_path / "out")
    expected_type = {"tsv": "csv"}.get(layout, layout)
    assert m["inputs"]["type"] == expected_type and m["counts"]["images"] == n
    assert m["counts"]["shards"] == 3  # 2 + 2 + 1 images (one output shard per tar for WebDataset)
    ds = TokenDataset(tmp_path / "out")
    assert [ds[i]["caption"] for i in range(n)] == [f"caption {i}" for i in range(n)]
    assert "label" not in ds[0]


def test_a_plain_image_folder_has_neither_labels_nor_captions(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    run(src, tmp_path / "out")
    ds = TokenDataset(tmp_path / "out")
    assert manifest(tmp_path / "out")["inputs"]["type"] == "images"
    assert set(ds[2]) == {"indices"}


def test_round_trip_equals_direct_encode_then_decode(tmp_path):
    """tokenize -> TokenDataset -> decode gives the images that encode -> decode of the model's own preprocess."""
    from toklip.data.preprocess import preprocess

    src = make_folder(tmp_path / "in", 3)
    run(src, tmp_path / "out", resize="shortest")
    torch.manual_seed(0)
    vq = toklip.get_spec("vq", "llamagen-test").create().eval()
    assert state_dict_sha256(vq) == manifest(tmp_path / "out")["tokenizer"]["weights_sha256"]
    ds = TokenDataset(tmp_path / "out", view=0)
    images = torch.stack([preprocess(src / ds.key(i), SIZE) for i in range(len(ds))])
    with torch.no_grad():
        direct = vq.encode(images).indices
        from_shards = torch.stack([ds[i]["indices"] for i in range(len(ds))]).reshape(direct.shape)
        assert torch.equal(from_shards, direct)
        assert torch.equal(vq.decode(from_shards), vq.decode(direct))


@pytest.mark.parametrize(("augment", "views"), [("center", 1), ("flip", 2), ("ten-crop", 10)])
def test_augmentations_store_every_view(tmp_path, augment, views):
    src = make_class_folders(tmp_path / "in", per_class=1)
    run(src, tmp_path / "out", augment=augment)
    m = manifest(tmp_path / "out")
    assert m["augment"]["variants"] == views and len(m["augment"]["views"]) == views
    assert m["counts"]["sequences"] == 2 * views
    ds = TokenDataset(tmp_path / "out")
    assert ds.tokens(0).shape == (views, 16)
    distinct = {TokenDataset(tmp_path / "out", view=v)[0]["indices"].numpy().tobytes() for v in range(views)}
    assert len(distinct) == views  # each view is its own crop, not a copy
    if augment == "ten-crop":
        assert m["augment"]["crop_range"] == 1.1


def test_flip_view_is_the_encoding_of_the_mirrored_image(tmp_path):
    from toklip.tokenize.augment import adm_center_crop, to_model_range
    from toklip.data.preprocess import load_image

    src = make_class_folders(tmp_path / "in", per_class=1, classes=("a",))
    run(src, tmp_path / "out", augment="flip")
    crop = np.asarray(adm_center_crop(load_image(src / "a" / "0.jpg"), SIZE))
    pair = torch.from_numpy(np.stack([crop, crop[:, ::-1].copy()])).permute(0, 3, 1, 2)
    torch.manual_seed(0)
    vq = toklip.get_spec("vq", "llamagen-test").create().eval()
    with torch.no_grad():
        expected = vq.encode(to_model_range(pair)).indices.reshape(2, -1)
    assert np.array_equal(TokenDataset(tmp_path / "out").tokens(0), expected.numpy())


def test_uint16_up_to_65536_codes_else_int32(tmp_path):
    assert token_dtype(1024) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.int32 and token_dtype(262144) == np.int32
    src = make_class_folders(tmp_path / "in", per_class=1)
    run(src, tmp_path / "out", spec=vq_spec(codebook_size=70_000))
    m = manifest(tmp_path / "out")
    assert m["dtype"] == "int32" and m["tokenizer"]["vocab_size"] == 70_000
    ds = TokenDataset(tmp_path / "out")
    assert ds.tokens(0).dtype == np.int32 and int(ds[1]["indices"].max()) < 70_000


def test_corrupt_and_hostile_images_are_skipped_counted_and_listed(tmp_path):
    bad = {"garbage.jpg": GARBAGE, "truncated.jpg": truncated_jpeg(3), "empty.png": b"",
           "bomb.png": bomb_png(), "fake.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"}
    src = make_class_folders(tmp_path / "in", per_class=2, bad=bad)
    with pytest.warns(UserWarning, match="skipped sample"):
        s = run(src, tmp_path / "out", shard_size=3)
    m = manifest(tmp_path / "out")
    assert s.images == 4 and s.skipped == 5
    assert m["counts"]["images"] == 4 and m["counts"]["skipped"] == 5 and m["counts"]["read"] == 9
    listed = {sk["key"].split("/")[-1]: sk["reason"] for sk in m["skipped_samples"]}
    assert set(listed) == set(bad)
    assert "ImageTooLargeError" in listed["bomb.png"] or "pixels" in listed["bomb.png"]
    assert [TokenDataset(tmp_path / "out")[i]["label"] for i in range(4)] == [0, 0, 1, 1]


def test_pooled_features_from_a_toklip_model(tmp_path):
    from toklip.tokenize.encode import TokenizerSpec

    src = make_class_folders(tmp_path / "in", per_class=1)
    spec = TokenizerSpec("model", "toklip-test", None, {}, 0)
    run(src, tmp_path / "out", spec=spec, size=None, features="pooled", augment="flip")
    m = manifest(tmp_path / "out")
    assert m["tokenizer"]["source"] == "model" and m["image_size"] == 64 and m["grid"] == [8, 8]
    dim = m["features"]["pooled"]["dim"]
    pooled = np.load(tmp_path / "out" / m["shards"][0]["pooled_file"])
    assert pooled.dtype == np.float16 and pooled.shape == (2, 2, dim)
    ds = TokenDataset(tmp_path / "out", with_pooled=True, view=1)
    item = ds[1]
    torch.manual_seed(0)
    model = toklip.build("toklip-test").eval()
    with torch.no_grad():
        expected = model.tokenize_indices(item["indices"][None]).pooled[0]
    assert torch.allclose(item["pooled"], expected, atol=2e-3, rtol=2e-3)


def test_features_pooled_needs_a_model(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=1)
    with pytest.raises(ConfigError, match="needs a TokLIP model"):
        run(src, tmp_path / "out", features="pooled")


def test_rerun_skips_finished_shards_and_redoes_a_half_written_one(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=3)
    run(src, tmp_path / "ref", shard_size=2)
    reference = shard_bytes(tmp_path / "ref")

    out = tmp_path / "out"
    run(src, out, shard_size=2)
    (out / "shards" / "00001.json").unlink()  # as if killed between the arrays and the record
    (out / "shards" / "00002.tokens.npy").write_bytes(b"half")  # a torn file (impossible with the atomic writer)
    (out / "shards" / "00002.json").unlink()
    (out / "shards" / ".00002.tokens.npy.abc.tmp").write_bytes(b"stale")
    (out / "manifest.json").unlink()
    s = run(src, out, shard_size=2)
    assert (s.shards_written, s.shards_skipped) == (2, 1)
    assert shard_bytes(out) == reference
    assert manifest(out)["counts"]["images"] == 6
    again = run(src, out, shard_size=2)
    assert (again.shards_written, again.shards_skipped) == (0, 3)


def test_other_settings_into_the_same_folder_are_refused(tmp_path):
    src = make_class_folders(tmp_path / "in", per_class=1)
    run(src, tmp_path / "out")
    with pytest.raises(ConfigError, match="other settings .*augment"):
        run(src, tmp_path / "out", augment="flip")
    with pytest.raises(ConfigError, match="tokenizer"):
        run(src, tmp_path / "out", spec=vq_spec(seed=1))


def test_a_dataset_folder_without_manifest_says_why(tmp_path):
    with pytest.raises(ConfigError, match="toklip tokenize"):
        TokenDataset(tmp_path)
