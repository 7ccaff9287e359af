"""Training data: every source, bad samples skipped and counted, seeded shuffling and exact stream resume."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest

pytest.importorskip("webdataset", reason="training needs the train extra: pip install 'toklip[train]'")

from toklip.core.errors import TokLIPError  # noqa: E402
from toklip.train.config import DataConfig  # noqa: E402
from toklip.data.sources import DataError, ListSource, Part, RawSample, WebDatasetSource, open_source  # noqa: E402
from toklip.train.data import BatchStream, DataPosition, ImageText, iter_batches, make_loader  # noqa: E402

from .conftest import (  # noqa: E402
    caption_index,
    make_csv,
    make_folder,
    make_shards,
    simple_tokenizer,
)


def stream_of(source, *, batch_size=4, workers=0, seed=0, shuffle=True, rank=0, world=1, max_pixels=None):
    samples = ImageText(image_size=16, tokenizer=simple_tokenizer, max_pixels=max_pixels)
    return BatchStream(source, batch_size=batch_size, decode=samples.decode, collate=samples.collate, rank=rank,
                       world=world, workers=workers, seed=seed, shuffle=shuffle)


def take(stream, n):
    """The first n batches (caption indices, state) through a real DataLoader with the stream's workers."""
    out = []
    for batch in iter_batches(make_loader(stream, stream.workers)):
        assert batch["images"].shape == (stream.batch_size, 3, 16, 16)
        assert batch["text_ids"][:, 0].tolist() == [caption_index(c) for c in batch["captions"]]
        out.append(([caption_index(c) for c in batch["captions"]], batch["state"]))
        if len(out) == n:
            break
    return out


def flat(batches):
    return [i for ids, _ in batches for i in ids]


def source_from(path, **kw):
    return open_source(DataConfig(path=str(path) if not isinstance(path, list) else path, **kw))


# ---------------------------------------------------------------------------------------------- sources
def test_folder_source_txt_and_json_captions(tmp_path):
    root = make_folder(tmp_path / "imgs", 8, json_every=3)
    (root / "sub").mkdir()
    (root / "sub" / "notes.md").write_text("not an image")
    src = source_from(root)
    assert isinstance(src, ListSource) and src.num_samples == 8
    assert sorted(flat(take(stream_of(src, shuffle=False), 2))) == list(range(8))


def test_folder_image_without_caption_file_is_left_out_with_a_warning(tmp_path):
    root = make_folder(tmp_path / "imgs", 6, bad={2: "no_caption"})
    with pytest.warns(UserWarning, match="1 image"):
        src = source_from(root)
    assert src.num_samples == 5


@pytest.mark.parametrize("sep,name", [(",", "data.csv"), ("\t", "data.tsv")])
def test_csv_and_tsv_with_paths_relative_to_the_file(tmp_path, monkeypatch, sep, name):
    path = make_csv(tmp_path / "set", 6, sep=sep, name=name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths resolve against the CSV, not the working directory
    src = source_from(path)
    assert src.num_samples == 6
    batches = take(stream_of(src, batch_size=3, shuffle=False), 2)
    assert flat(batches) == list(range(6))
    assert batches[-1][1]["skipped"] == 0


def test_txt_captions_are_text_even_when_they_look_like_json(tmp_path):
    import webdataset as wds

    from .conftest import jpeg_bytes

    root = make_folder(tmp_path / "imgs", 3)
    (root / "0001.txt").write_text("{curly} braces, caption 1")
    shard = tmp_path / "s" / "00000.tar"
    shard.parent.mkdir()
    with wds.TarWriter(str(shard)) as w:
        w.write({"__key__": "a", "jpg": jpeg_bytes(0), "txt": "{not: json} caption 0"})
        w.write({"__key__": "b", "jpg": jpeg_bytes(1), "json": {"caption": "caption 1"}})
    for path in (root, tmp_path / "s"):
        n = 3 if path == root else 2
        batches = take(stream_of(source_from(path), batch_size=n, shuffle=False), 1)
        assert batches[0][0] == list(range(n)) and batches[0][1]["skipped"] == 0


def test_csv_without_usable_columns_says_which_to_use(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\nimg.jpg,cap\n")
    with pytest.raises(TokLIPError, match="no image column"):
        source_from(path)


def test_webdataset_shards_with_stats_give_num_samples(tmp_path):
    make_shards(tmp_path / "shards", 10, 4)
    for path in (tmp_path / "shards", str(tmp_path / "shards" / "{00000..00002}.tar")):
        src = source_from(path)
        assert isinstance(src, WebDatasetSource)
        assert src.num_samples == 10 and len(src.urls) == 3
    batches = take(stream_of(src, batch_size=5, shuffle=False), 2)
    assert flat(batches) == list(range(10))  # .txt and .json ({"caption": ...}) captions alike


def test_webdataset_without_stats_has_unknown_size(tmp_path):
    make_shards(tmp_path / "shards", 4, 2, stats=False)
    assert source_from(tmp_path / "shards").num_samples is None
    assert source_from(tmp_path / "shards", num_samples=4).num_samples == 4


@pytest.mark.parametrize("kind", ["folder", "csv", "webdataset"])
def test_corrupt_images_and_bad_captions_are_skipped_and_counted(tmp_path, kind):
    bad = {1: "garbage", 4: "truncated", 6: "empty_caption"}
    if kind == "folder":
        path = make_folder(tmp_path / "d", 10, bad=bad)
    elif kind == "csv":
        path = make_csv(tmp_path / "d", 10, bad={1: "garbage", 4: "missing_file", 6: "empty_caption"})
    else:
        bad[8] = "no_caption"
        make_shards(tmp_path / "d", 10, 5, bad=bad)
        path = tmp_path / "d"
    src = source_from(path)
    nbad = len(bad) if kind == "webdataset" else 3
    good = [i for i in range(10) if i not in bad]
    with pytest.warns(UserWarning, match="skipped sample"):
        batches = take(stream_of(src, batch_size=len(good), shuffle=False), 2)
    assert batches[0][0] == good
    assert batches[0][1]["skipped"] == nbad and batches[0][1]["seen"] == len(good)
    assert batches[1][1]["skipped"] == 2 * nbad  # counted again in the next epoch
    pos = DataPosition()
    pos.update(batches[1][1])
    assert pos.skipped == 2 * nbad


def test_decompression_bombs_are_refused_and_counted(tmp_path):
    root = make_folder(tmp_path / "d", 6, big=[0, 3])  # 120x120 = 14,400 px; the others 40x48 = 1,920 px
    src = source_from(root)
    with pytest.warns(UserWarning, match="decompression-bomb"):
        batches = take(stream_of(src, batch_size=4, shuffle=False, max_pixels=5000), 1)
    assert batches[0][0] == [1, 2, 4, 5]
    assert batches[0][1]["skipped"] == 2
    # without the small limit the same images are fine
    assert take(stream_of(src, batch_size=6, shuffle=False), 1)[0][0] == list(range(6))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["folder", "webdataset", "garbage_tar"])
def test_a_source_without_a_readable_sample_is_a_clear_data_error(tmp_path, kind, workers):
    if kind == "folder":
        src = source_from(make_folder(tmp_path / "d", 4, bad={i: "garbage" for i in range(4)}))
    elif kind == "webdataset":
        make_shards(tmp_path / "d", 4, 2, bad={i: "truncated" for i in range(4)})
        src = source_from(tmp_path / "d")
    else:
        (tmp_path / "d").mkdir()
        for s in range(2):
            (tmp_path / "d" / f"{s:05d}.tar").write_bytes(b"not a tar file" * 50)
        src = source_from(tmp_path / "d")
    with pytest.raises(DataError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        take(stream_of(src, batch_size=2, workers=workers), 1)
    msg = str(info.value)
    assert "no readable sample" in msg or "is empty" in msg
    assert "Traceback" not in msg and "\n" not in msg  # one clear line, also from a loader worker
    assert isinstance(info.value, TokLIPError)  # so `toklip train` prints it without a traceback


def test_missing_data_paths_fail_at_open_time(tmp_path):
    with pytest.raises(TokLIPError, match="does not exist"):
        source_from(tmp_path / "nowhere")
    with pytest.raises(TokLIPError, match="does not exist"):
        source_from(tmp_path / "nowhere.csv")
    with pytest.raises(DataError, match="no shard"):
        source_from(str(tmp_path / "shards-{00000..00003}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        source_from(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- shuffling
def list_source(n):
    return ListSource([RawSample(key=str(i), image=None, caption=str(i)) for i in range(n)], "test list")


def test_list_order_is_seeded_per_epoch():
    src = list_source(50)
    whole = Part()
    a = src.order(0, whole, seed=1, shuffle=True)
    assert a == src.order(0, whole, seed=1, shuffle=True)
    assert sorted(a) == list(range(50)) and a != list(range(50))
    assert a != src.order(0, whole, seed=2, shuffle=True)
    assert a != src.order(1, whole, seed=1, shuffle=True)
    assert src.order(3, whole, seed=1, shuffle=False) == list(range(50))


@pytest.mark.parametrize("world,workers", [(2, 1), (3, 2), (1, 4)])
def test_list_shares_are_disjoint_and_cover_the_data(world, workers):
    src = list_source(37)
    shares = [src.order(5, Part(r, world, w, workers), seed=9, shuffle=True)
              for r in range(world) for w in range(workers)]
    joined = [i for s in shares for i in s]
    assert sorted(joined) == list(range(37))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def wds_keys(src, epoch, part, seed, shuffle=True):
    return [s.key.rsplit(":", 1)[1] for s in src.iter_epoch(epoch, part, seed=seed, shuffle=shuffle, start=0)]


@pytest.mark.parametrize("shards,per_shard,world,workers", [(6, 3, 2, 1), (6, 3, 2, 3), (2, 9, 2, 2)])
def test_webdataset_order_is_seeded_and_shares_cover_the_data(tmp_path, shards, per_shard, world, workers):
    n = shards * per_shard
    make_shards(tmp_path / "s", n, per_shard)
    src = source_from(tmp_path / "s", shuffle_buffer=4)
    whole = wds_keys(src, 0, Part(), seed=1)
    assert sorted(whole) == [f"{i:09d}" for i in range(n)]
    assert whole == wds_keys(src, 0, Part(), seed=1)
    assert whole != wds_keys(src, 0, Part(), seed=2)
    assert whole != wds_keys(src, 1, Part(), seed=1)
    shares = [wds_keys(src, 2, Part(r, world, w, workers), seed=3) for r in range(world) for w in range(workers)]
    assert all(shares)
    assert sorted(k for s in shares for k in s) == [f"{i:09d}" for i in range(n)]


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_two_loader_workers_yield_every_sample_once_per_epoch(tmp_path, kind):
    if kind == "folder":
        src = source_from(make_folder(tmp_path / "d", 16))
    else:
        make_shards(tmp_path / "d", 16, 4)
        src = source_from(tmp_path / "d", shuffle_buffer=3)
    batches = take(stream_of(src, batch_size=4, workers=2, seed=5), 8)
    assert {b[1]["worker"] for b in batches} == {0, 1}
    for epoch in range(2):
        ids = flat(batches[4 * epoch: 4 * epoch + 4])
        assert sorted(ids) == list(range(16)), f"epoch {epoch}: {Counter(ids)}"
    assert flat(batches[:4]) != flat(batches[4:])  # reshuffled for the next epoch


# ---------------------------------------------------------------------------------------------- resume
def resumed(src, first, total, *, batch_size, workers=0, **kw):
    """``first`` batches, then a brand-new stream resumed from the JSON-saved position for the rest."""
    head = take(stream_of(src, batch_size=batch_size, workers=workers, **kw), first)
    pos = DataPosition()
    for _, state in head:
        pos.update(state)
    saved = json.loads(json.dumps(pos.state_dict()))
    stream = stream_of(src, batch_size=batch_size, workers=workers, **kw)
    stream.set_resume(DataPosition(saved).workers)
    return head + take(stream, total - first)


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_resumed_stream_continues_exactly_with_workers_0(tmp_path, kind):
    bad = {3: "garbage", 7: "empty_caption"}
    if kind == "folder":
        src = source_from(make_folder(tmp_path / "d", 11, bad=bad))
    else:
        make_shards(tmp_path / "d", 11, 3, bad=bad)
        src = source_from(tmp_path / "d", shuffle_buffer=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = take(stream_of(src, batch_size=3, seed=7), 9)  # 9 good per epoch: batches cross epochs
        for first in (1, 4, 5):
            again = resumed(src, first, 9, batch_size=3, seed=7)
            assert flat(again) == flat(whole), f"resumed after {first} batches"
            assert again[-1][1] == whole[-1][1]  # same epoch, position, skipped and seen counts


def test_resumed_stream_with_two_workers_neither_repeats_nor_loses(tmp_path):
    src = source_from(make_folder(tmp_path / "d", 16))
    whole = take(stream_of(src, batch_size=3, workers=2, seed=3), 8)
    again = resumed(src, 3, 8, batch_size=3, workers=2, seed=3)

    def per_worker(batches):
        out = {0: [], 1: []}
        for ids, state in batches:
            out[state["worker"]].extend(ids)
        return out

    a, b = per_worker(whole), per_worker(again)
    for w in (0, 1):  # each worker's sequence continues where the used batches left it
        n = min(len(a[w]), len(b[w]))
        assert n >= 9 and b[w][:n] == a[w][:n], f"worker {w}"
    # the first epoch of both workers together is every sample exactly once
    assert sorted(b[0][:8] + b[1][:8]) == list(range(16))
