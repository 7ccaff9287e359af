"""`toklip chat` (the click command the CLI registers) and the handler behind POST /v1/chat: replies, streaming and
bad inputs as toklip errors."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from PIL import Image

import toklip
from toklip.data.preprocess import ImageTooLargeError, NotAnImageError
from toklip.vlm.chat_cli import chat_command
from toklip.vlm.serve_chat import ChatLimits, chat_reply

from .conftest import image


def _png(i: int) -> bytes:
    arr = ((image(i).permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_chat_reply_matches_vlm_chat_and_streams(vlm):
    data = _png(1)
    msgs = [{"role": "user", "content": "what digit is this ?"}]
    reply = chat_reply(vlm, data, msgs, max_new_tokens=5)
    assert reply == vlm.chat(Image.open(io.BytesIO(data)), "what digit is this ?", max_new_tokens=5, do_sample=False)
    assert "".join(chat_reply(vlm, data, msgs, max_new_tokens=5, stream=True)).strip() == reply
    assert isinstance(chat_reply(vlm, None, msgs, max_new_tokens=3), str)  # text only


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty list"),
    ([{"role": "user", "content": "<image> hi"}], "send the image as the request's image"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message must be the user"),
    ([{"role": "robot", "content": "hi"}], "role must be one of"),
    ([{"role": "user", "content": 5}], "content must be a string"),
    ([{"role": "user", "content": "hi", "extra": 1}], "exactly 'role' and 'content'"),
    ([{"role": "user", "content": "hi"}] * 3, "limit is 2"),
    ([{"role": "user", "content": "x" * 101}], "101 characters"),
])
def test_chat_reply_refuses_bad_messages(vlm, messages, match):
    with pytest.raises(toklip.InputError, match=match):
        chat_reply(vlm, None, messages, ChatLimits(max_messages=2, max_chars=100))


def test_chat_reply_refuses_bad_images_and_options(vlm):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(NotAnImageError):
        chat_reply(vlm, b"not an image at all", msgs)
    with pytest.raises(ImageTooLargeError):
        chat_reply(vlm, _png(0), msgs, ChatLimits(max_image_pixels=100))
    with pytest.raises(toklip.InputError, match="max_new_tokens must be an integer in 1..8"):
        chat_reply(vlm, None, msgs, ChatLimits(max_new_tokens=8), max_new_tokens=9)
    with pytest.raises(toklip.InputError, match="temperature"):
        chat_reply(vlm, None, msgs, temperature=-1)


def test_toklip_chat_answers_a_prompt_and_talks(vlm, tmp_path):
    folder = vlm.save_pretrained(tmp_path / "vlm")
    (tmp_path / "x.png").write_bytes(_png(2))
    expected = vlm.chat(tmp_path / "x.png", "what digit is this ?", max_new_tokens=4, do_sample=False)
    runner = CliRunner()
    once = runner.invoke(chat_command, [str(folder), "--image", str(tmp_path / "x.png"), "--prompt",
                                        "what digit is this ?", "--max-new-tokens", "4", "--device", "cpu"],
                         catch_exceptions=False)
    assert once.exit_code == 0 and once.stdout.strip() == expected
    talk = runner.invoke(chat_command, [str(folder), "--image", str(tmp_path / "x.png"), "--max-new-tokens", "4",
                                        "--device", "cpu"], input="what digit is this ?\n/reset\n\n",
                         catch_exceptions=False)
    assert talk.exit_code == 0 and expected in talk.stdout
