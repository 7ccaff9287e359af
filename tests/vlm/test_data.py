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
