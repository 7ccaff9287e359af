"""The LLaVA conversation stream: shares per process and worker, exact resume positions, and skipped records."""

from __future__ import annotations

import json

import pytest
import torch

import toklip
from toklip.vlm.data import ConversationFile, vlm_stream

from .conftest import write_llava


def _stream(vlm, data, **kw):
    opts = {"tokenizer": vlm.tokenizer, "num_image_tokens": vlm.num_image_tokens, "image_token": "<image>",
            "image_token_id": vlm.image_token_id, "template": "chat", "image_size": vlm.image_size, "batch_size": 2}
    return vlm_stream(data, **{**opts, **kw})


def _logged(stream):
    """The real stream, noting which record each decoded sample came from."""
    decode, stream.read = stream.decode, []

    def noting(raw):
        stream.read.append(int(raw.image[1]))
        return decode(raw)

    stream.decode = noting
    return stream


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_batches_hold_padded_conversations_and_their_images(vlm, tmp_path):
    data = ConversationFile(write_llava(tmp_path, 6, text_only=(1,)))
    batches = _take(_stream(vlm, data, shuffle=False), 3)
    b0 = batches[0]  # records 0 and 1: one image, then a text-only conversation
    assert b0["images"].shape == (1, 3, 64, 64) and b0["input_ids"].shape[0] == 2
    assert int((b0["input_ids"] == vlm.image_token_id).sum()) == vlm.num_image_tokens
    assert b0["state"] == {"worker": 0, "epoch": 0, "pos": 2, "skipped": 0, "seen": 2}
    assert batches[1]["images"].shape[0] == 2
    loss = vlm(b0["input_ids"], b0["attention_mask"], b0["labels"], b0["images"])["loss"]
    assert torch.isfinite(loss)


def test_a_resumed_stream_continues_exactly(vlm, tmp_path):
    data = ConversationFile(write_llava(tmp_path, 7))
    full = _take(_stream(vlm, data, seed=3), 6)  # crosses into epoch 1 (7 records, batches of 2)
    resumed = _stream(vlm, data, seed=3)
    resumed.set_resume({0: {k: v for k, v in full[2]["state"].items() if k != "worker"}})
    for a, b in zip(full[3:], _take(resumed, 3)):
        assert torch.equal(a["input_ids"], b["input_ids"]) and a["state"] == b["state"]
    assert full[-1]["state"]["epoch"] == 1


def test_processes_and_workers_read_disjoint_shares_that_cover_an_epoch(vlm, tmp_path):
    data = ConversationFile(write_llava(tmp_path, 16))
    read = []
    for rank in range(2):
        s = _logged(_stream(vlm, data, rank=rank, world=2, workers=2, batch_size=1))
        for worker in range(2):
            s.read = []
            it = s._batches(worker, 2)
            for _ in range(4):
                next(it)
            read.append(list(s.read))
    flat = [i for share in read for i in share]
    assert sorted(flat) == list(range(16))  # every record once, in four shares of four


def test_unusable_records_are_skipped_and_counted(vlm, tmp_path):
    path = write_llava(tmp_path, 6, missing=(1,))
    records = json.loads(path.read_text())
    records[2]["image"] = "../outside.png"  # never read outside the image folder
    records[3]["conversations"][0]["value"] = "what digit is this ?"  # an image but no placeholder
    records[4] = {"id": "4", "conversations": "not a list"}
    path.write_text(json.dumps(records))
    stream = _stream(vlm, ConversationFile(path), shuffle=False, batch_size=1)
    with pytest.warns(UserWarning) as caught:
        batches = _take(stream, 2)
    text = " | ".join(str(w.message) for w in caught)
    assert "does not exist" in text and "leaves the image folder" in text and "no '<image>' placeholder" in text
    assert "no 'conversations' list" in text
    assert batches[1]["state"]["skipped"] == 4 and batches[1]["state"]["seen"] == 2


def test_max_length_truncates_text_but_never_cuts_an_image(vlm, tmp_path):
    data = ConversationFile(write_llava(tmp_path, 2))
    n = vlm.num_image_tokens
    with pytest.warns(UserWarning, match="would cut into its image tokens"), \
            pytest.raises(toklip.TokLIPError, match="has no readable sample"):
        _take(_stream(vlm, data, max_length=n, batch_size=1), 1)
    batch = _take(_stream(vlm, data, max_length=n + 10, batch_size=1, shuffle=False), 1)[0]
    assert batch["input_ids"].shape[1] == n + 10


def test_a_bad_conversation_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(toklip.ConfigError, match="not a JSON file of LLaVA conversations"):
        ConversationFile(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(toklip.ConfigError, match="non-empty JSON list"):
        ConversationFile(tmp_path / "empty.json")
    (tmp_path / "ok.json").write_text("[{}]")
    with pytest.raises(toklip.ConfigError, match="is not a folder"):
        ConversationFile(tmp_path / "ok.json", tmp_path / "nowhere")


def _shards(path, root, per_shard: int) -> list:
    """The records of a LLaVA JSON file as WebDataset shards: KEY.json (the record) + KEY.png (its image)."""
    import io
    import tarfile

    records = json.loads(path.read_text())
    root.mkdir()
    shards = []
    for start in range(0, len(records), per_shard):
        shard = root / f"llava-{start // per_shard:03d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i, rec in enumerate(records[start : start + per_shard], start):
                members = {f"{i:05d}.json": json.dumps(rec).encode()}
                if "image" in rec and (path.parent / rec["image"]).is_file():  # a missing one: no image member
                    members[f"{i:05d}.png"] = (path.parent / rec["image"]).read_bytes()
                for name, payload in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        shards.append(shard)
    return shards


def test_webdataset_shards_give_the_json_files_batches(vlm, tmp_path):
    from toklip.vlm.data import ConversationShards, open_conversations

    path = write_llava(tmp_path / "json", 6, text_only=(1,))
    _shards(path, tmp_path / "wds", per_shard=6)
    shards = open_conversations(tmp_path / "wds")
    assert isinstance(shards, ConversationShards) and isinstance(open_conversations(path), ConversationFile)
    want = _take(_stream(vlm, ConversationFile(path), shuffle=False), 3)
    got = _take(_stream(vlm, shards, shuffle=False), 3)
    for a, b in zip(want, got):
        for key in ("input_ids", "attention_mask", "labels", "images"):
            assert torch.equal(a[key], b[key]), key
        assert a["state"] == b["state"]


def test_a_resumed_shard_stream_continues_exactly(vlm, tmp_path):
    from toklip.vlm.data import open_conversations

    _shards(write_llava(tmp_path / "json", 9), tmp_path / "wds", per_shard=3)
    data = open_conversations(str(tmp_path / "wds" / "llava-{000..002}.tar"))
    full = _take(_stream(vlm, data, seed=3), 6)  # 9 samples in batches of 2: crosses into epoch 1
    resumed = _stream(vlm, data, seed=3)
    resumed.set_resume({0: {k: v for k, v in full[2]["state"].items() if k != "worker"}})
    for a, b in zip(full[3:], _take(resumed, 3)):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["images"], b["images"])
        assert a["state"] == b["state"]


def test_bad_shard_samples_are_skipped_and_bad_paths_refused(vlm, tmp_path):
    import io
    import tarfile

    from toklip.vlm.data import open_conversations

    shard = tmp_path / "bad.tar"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "one"}]}
    with tarfile.open(shard, "w") as tar:
        for name, payload in [("a.txt", b"a caption, not a record"), ("b.json", b"{not json"),
                              ("c.json", json.dumps({"conversations": "no"}).encode()),
                              ("d.json", json.dumps(good).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.warns(UserWarning) as caught:
        batch = _take(_stream(vlm, open_conversations(shard), shuffle=False, batch_size=1), 1)[0]
    text = " | ".join(str(w.message) for w in caught)
    assert "has no .json record" in text and "is not JSON" in text and "no 'conversations' list" in text
    assert batch["state"]["skipped"] == 3 and batch["images"].shape[0] == 0
    with pytest.raises(toklip.ConfigError, match="WebDataset shards hold their own images"):
        open_conversations(shard, tmp_path)
    with pytest.raises(toklip.ConfigError, match="no shard of"):
        open_conversations(str(tmp_path / "missing-{000..001}.tar"))
