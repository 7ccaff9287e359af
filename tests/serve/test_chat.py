"""POST /v1/chat on a real `toklip serve --vlm` process (one per module) with a tiny VLM (a random Llama and a word
tokenizer trained here, the helpers of tests/vlm): whole and streamed replies checked against the library run
in-process, every bad input a 4xx with its code, /v1/info, metrics, a disconnect stopping the generation, the
CLI's errors, and the page's chat panel."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import torch

from tests.serve import media
from tests.serve.test_generate import _error, _metric
from tests.serve.test_page import browser  # noqa: F401 - the headless-browser fixture (skips without chromium)
from tests.vlm.conftest import WORDS
from toklip.cli import main
from toklip.serve.process import ServerProcess

CHAT = "/v1/chat"
MAX_TOKENS = 400  # --max-chat-tokens: a whole reply this long takes the tiny model about a second
MAX_PIXELS = 5000  # --max-image-pixels: the 64 x 64 test images pass, 100 x 100 ones do not
MAX_BODY = 52_428  # --max-body-mb 0.05: small, so a refused body fits in the socket buffers
QUESTION = [{"role": "user", "content": "what digit is this ?"}]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory):
    from toklip.vlm.model import build_vlm
    from toklip.vlm.tiny import make_tiny_llm

    root = tmp_path_factory.mktemp("chat")
    llm = make_tiny_llm(root / "tiny-llama", WORDS, tie_embeddings=False)  # tied, it repeats its last word
    torch.manual_seed(0)
    return build_vlm(tokenizer="toklip-test", llm=llm).save_pretrained(root / "vlm")


@pytest.fixture(scope="module")
def reference_vlm(vlm_folder):
    """The served VLM, reloaded in this process the way the server loads it."""
    import toklip

    return toklip.load_vlm(vlm_folder)


@pytest.fixture(scope="module")
def chat_server(saved_model, vlm_folder) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--model", str(saved_model[0]), "--vlm", str(vlm_folder), "--max-chat-tokens",
                          str(MAX_TOKENS), "--max-image-pixels", str(MAX_PIXELS), "--max-body-mb", "0.05",
                          "--log-level", "warning", "--no-access-log"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chat_http(chat_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=chat_server.url, timeout=60) as client:
        yield client


def _png(seed: int, size: int = 64) -> bytes:
    return media.png(media.noise(size, size, seed=seed))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _expected(vlm, image: bytes | None, messages, max_new_tokens: int) -> str:
    from toklip.vlm.serve_chat import chat_reply

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return chat_reply(vlm, image, messages, max_new_tokens=max_new_tokens)  # type: ignore[return-value]
    finally:
        torch.set_num_threads(threads)


def _events(client: httpx.Client, body: dict) -> tuple[httpx.Response, list]:
    """POST a streamed chat; -> (the response, its events: dicts, or the string "[DONE]")."""
    with client.stream("POST", CHAT, json={**body, "stream": True}) as r:
        raw = r.read().decode()
    assert r.status_code == 200, raw
    assert r.headers["content-type"].startswith("text/event-stream") and r.headers["cache-control"] == "no-cache"
    assert raw.endswith("\n\n"), raw
    events = []
    for block in raw[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block  # one data line per event
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return r, events


# ---------------------------------------------------------------------------------------------- answers
def test_info_describes_the_chat_model(chat_http, reference_vlm, vlm_folder):
    r = chat_http.get("/v1/info")
    chat = r.json()["chat"]
    assert chat["name"] == "toklip-test + tiny-llama" and chat["llm"] == "tiny-llama"
    assert chat["image_tokens"] == reference_vlm.num_image_tokens == 64 and chat["image_size"] == 64
    assert chat["roles"] == ["system", "user", "assistant"] and chat["dtype"] == "float32"
    assert chat["limits"]["max_new_tokens"] == MAX_TOKENS and chat["limits"]["default_new_tokens"] == 128
    assert chat["limits"]["max_image_pixels"] == MAX_PIXELS and chat["limits"]["max_body_bytes"] == MAX_BODY
    assert str(vlm_folder.parent) not in r.text  # /v1/info never shows server paths


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
def test_whole_and_streamed_replies_match_the_library(chat_http, reference_vlm, with_image):
    image = _png(1) if with_image else None
    messages = [{"role": "system", "content": "describe the image ."}, *QUESTION,
                {"role": "assistant", "content": "seven"}, {"role": "user", "content": "what colour is the ink ?"}]
    expected = _expected(reference_vlm, image, messages, 12)
    body = {"messages": messages, "max_new_tokens": 12, **({"image": _b64(image)} if image else {})}
    r = chat_http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == expected and expected.strip()
    assert 1 <= out["usage"]["new_tokens"] <= 12 and out["vlm"] == "toklip-test + tiny-llama"
    assert 0 < out["timing"]["generate_s"] <= out["timing"]["total_s"]
    _, events = _events(chat_http, body)
    assert events[-1] == "[DONE]" and all(set(e) == {"text"} for e in events[:-1])
    assert len(events) > 2  # piece by piece, not one event
    assert "".join(e["text"] for e in events[:-1]) == expected


def test_the_image_reaches_the_model(chat_http):
    about = chat_http.post(CHAT, json={"messages": QUESTION, "image": _b64(_png(1)), "max_new_tokens": 12})
    text_only = chat_http.post(CHAT, json={"messages": QUESTION, "max_new_tokens": 12})
    assert about.json()["text"] != text_only.json()["text"]


def test_defaults_data_urls_and_sampling(chat_http, reference_vlm):
    url = "data:image/png;base64," + _b64(_png(4))
    r = chat_http.post(CHAT, json={"messages": QUESTION, "image": url, "max_new_tokens": 6})
    assert r.status_code == 200 and r.json()["text"] == _expected(reference_vlm, _png(4), QUESTION, 6)
    sampled = chat_http.post(CHAT, json={"messages": QUESTION, "max_new_tokens": 6, "temperature": 1.5})
    assert sampled.status_code == 200 and isinstance(sampled.json()["text"], str)
    default = chat_http.post(CHAT, json={"messages": QUESTION}).json()
    assert default["usage"]["new_tokens"] <= 128  # ChatLimits.default_new_tokens


def _raw(data: bytes, ctype: str = "application/json"):
    return {"content": data, "headers": {"Content-Type": ctype}}


def _msgs(content: str = "hi"):
    return [{"role": "user", "content": content}]


BAD = [  # (id, request kwargs, status, code, a fragment of the message)
    ("invalid-json", _raw(b'{"messages": ['), 400, "invalid_json", "not valid JSON"),
    ("empty-body", _raw(b""), 400, "empty_body", "empty"),
    ("json-array", {"json": [1]}, 422, "invalid_field", "object"),
    ("no-content-type", {"content": b'{"messages": []}'}, 415, "unsupported_media_type", "application/json"),
    ("form-body", {"data": {"messages": "hi"}}, 415, "unsupported_media_type", "application/json"),
    ("no-messages", {"json": {"image": _b64(b"x")}}, 422, "invalid_field", "missing field 'messages'"),
    ("unknown-field", {"json": {"messages": _msgs(), "top_k": 3}}, 422, "invalid_field", "unknown field 'top_k'"),
    ("messages-not-a-list", {"json": {"messages": "hi"}}, 422, "invalid_messages", "non-empty list"),
    ("messages-empty", {"json": {"messages": []}}, 422, "invalid_messages", "non-empty list"),
    ("message-not-an-object", {"json": {"messages": ["hi"]}}, 422, "invalid_messages", "exactly 'role' and 'content'"),
    ("message-extra-key", {"json": {"messages": [{"role": "user", "content": "hi", "name": "x"}]}}, 422,
     "invalid_messages", "exactly 'role' and 'content'"),
    ("unknown-role", {"json": {"messages": [{"role": "robot", "content": "hi"}]}}, 422, "invalid_messages",
     "role must be one of system, user, assistant"),
    ("content-not-a-string", {"json": {"messages": [{"role": "user", "content": 3}]}}, 422, "invalid_messages",
     "content must be a string"),
    ("last-not-user", {"json": {"messages": [*_msgs(), {"role": "assistant", "content": "yo"}]}}, 422,
     "invalid_messages", "last message must be the user's"),
    ("image-placeholder", {"json": {"messages": _msgs("<image> what is it ?")}}, 422, "invalid_messages",
     "send the image as the request's image"),
    ("too-many-messages", {"json": {"messages": _msgs() * 33}}, 413, "too_many_items", "the limit is 32"),
    ("too-many-chars", {"json": {"messages": _msgs("x" * 16_001)}}, 413, "messages_too_long", "16001 characters"),
    ("too-many-values", _raw(b'{"messages": [' + b"0," * 16_300 + b"0]}"), 413, "too_many_items", "values"),
    ("max-new-tokens-zero", {"json": {"messages": _msgs(), "max_new_tokens": 0}}, 422, "invalid_field",
     f"1..{MAX_TOKENS}"),
    ("max-new-tokens-too-large", {"json": {"messages": _msgs(), "max_new_tokens": MAX_TOKENS + 1}}, 422,
     "invalid_field", f"1..{MAX_TOKENS}"),
    ("max-new-tokens-bool", {"json": {"messages": _msgs(), "max_new_tokens": True}}, 422, "invalid_field",
     "max_new_tokens"),
    ("max-new-tokens-float", {"json": {"messages": _msgs(), "max_new_tokens": 4.0}}, 422, "invalid_field",
     "max_new_tokens"),
    ("temperature-negative", {"json": {"messages": _msgs(), "temperature": -0.5}}, 422, "invalid_field",
     "temperature must be a number in [0, 2]"),
    ("temperature-too-high", {"json": {"messages": _msgs(), "temperature": 2.5}}, 422, "invalid_field", "[0, 2]"),
    ("temperature-nan", _raw(b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'), 422,
     "invalid_field", "temperature"),
    ("temperature-string", {"json": {"messages": _msgs(), "temperature": "hot"}}, 422, "invalid_field",
     "temperature"),
    ("stream-string", {"json": {"messages": _msgs(), "stream": "yes"}}, 422, "invalid_field", "stream"),
    ("bad-base64", {"json": {"messages": _msgs(), "image": "not base64!"}}, 400, "invalid_base64",
     "image is not valid base64"),
    ("empty-image", {"json": {"messages": _msgs(), "image": ""}}, 400, "empty_image", "image is empty"),
    ("image-url", {"json": {"messages": _msgs(), "image": "https://example.com/cat.png"}}, 422, "url_not_allowed",
     "never fetches"),
    ("image-not-a-string", {"json": {"messages": _msgs(), "image": [1]}}, 422, "invalid_field", "image"),
    ("text-bytes", {"json": {"messages": _msgs(), "image": _b64(b"hello, these are notes")}}, 400, "not_an_image",
     "plain text"),
    ("eps-image", {"json": {"messages": _msgs(), "image": _b64(media.EPS)}}, 415, "unsupported_image_format", "EPS"),
    ("truncated-image", {"json": {"messages": _msgs(), "image": _b64(media.truncated(_png(0)))}}, 400,
     "invalid_image", "image"),
    ("too-many-pixels", {"json": {"messages": _msgs(), "image": _b64(_png(0, size=100))}}, 413, "image_too_large",
     "image"),
    ("strip-image", {"json": {"messages": _msgs(), "image": _b64(media.strip_png(1, 4000))}}, 422,
     "unsupported_image_shape", "image"),
]


@pytest.mark.parametrize("kwargs,status,code,fragment", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_gets_a_clear_4xx(chat_http, kwargs, status, code, fragment):
    assert fragment in _error(chat_http.post(CHAT, **kwargs), status, code)


def test_bad_input_to_a_stream_is_a_plain_http_error(chat_http):
    r = chat_http.post(CHAT, json={"messages": _msgs("<image>"), "stream": True})
    assert r.headers["content-type"] == "application/json"
    _error(r, 422, "invalid_messages")


def test_a_body_too_large_is_refused_unread_and_the_connection_closed(chat_http):
    big = json.dumps({"messages": _msgs(), "image": "A" * MAX_BODY}).encode()
    for content in (big, iter([big[:8000], big[8000:]])):  # declared, and streamed without a Content-Length
        r = chat_http.post(CHAT, content=content, headers={"Content-Type": "application/json"})
        assert f"{MAX_BODY:,}" in _error(r, 413, "body_too_large")
        assert r.headers.get("connection") == "close"  # else its unread bytes would be read as the next request
        assert chat_http.get("/v1/info").status_code == 200


def test_get_is_not_allowed(chat_http):
    _error(chat_http.get(CHAT), 405, "method_not_allowed")


def test_metrics_count_replies_tokens_and_no_5xx(chat_http):
    before = chat_http.get("/metrics").text
    _events(chat_http, {"messages": QUESTION, "max_new_tokens": 7})
    # second: a stream's request is counted just after its last byte, a whole answer's before it
    whole = chat_http.post(CHAT, json={"messages": QUESTION, "max_new_tokens": 5}).json()
    after = chat_http.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("toklip_chat_replies_total", mode="whole") == 1 and delta("toklip_chat_replies_total", mode="stream") == 1
    assert delta("toklip_chat_tokens_total") == whole["usage"]["new_tokens"] + 7  # greedy, no end token in 7
    assert delta("toklip_chat_duration_seconds_count") == 2
    assert delta("toklip_requests_total", endpoint=CHAT, status="200") == 2
    assert delta("toklip_items_total", op="chat") == 2 and delta("toklip_batch_size_count", op="chat") == 2
    fives = [line for line in after.splitlines() if line.startswith("toklip_requests_total") and 'status="5' in line]
    assert fives == []  # whatever ran before in this module (the bad inputs included) never got a 5xx


def test_a_client_that_leaves_stops_the_generation(chat_http):
    body = {"messages": QUESTION, "max_new_tokens": MAX_TOKENS}
    assert chat_http.post(CHAT, json=body).json()["usage"]["new_tokens"] == MAX_TOKENS  # no end token before it
    before = chat_http.get("/metrics").text
    with chat_http.stream("POST", CHAT, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert json.loads(first[len("data: "):])["text"]
    # the connection is closed: the server's stream is cancelled and the model stops at its next token
    deadline = time.monotonic() + 30
    while True:
        after = chat_http.get("/metrics").text
        if _metric(after, "toklip_chat_replies_total", mode="stopped") > _metric(
                before, "toklip_chat_replies_total", mode="stopped") or time.monotonic() > deadline:
            break
    assert _metric(after, "toklip_chat_replies_total", mode="stopped") - _metric(
        before, "toklip_chat_replies_total", mode="stopped") == 1
    made = _metric(after, "toklip_chat_tokens_total") - _metric(before, "toklip_chat_tokens_total")
    assert 1 <= made < MAX_TOKENS / 2, made


def test_openapi_documents_chat(chat_http):
    spec = chat_http.get("/openapi.json").json()
    body = spec["paths"][CHAT]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"messages", "image", "max_new_tokens", "temperature", "stream"} <= set(body["properties"])
    assert body["properties"]["messages"]["items"]["properties"]["role"]["enum"] == ["system", "user", "assistant"]


def test_without_a_vlm_the_endpoint_says_how_to_get_one(http):
    assert http.get("/v1/info").json()["chat"] is None
    message = _error(http.post(CHAT, json={"messages": QUESTION}), 404, "no_chat_model")
    assert "--vlm" in message


# ---------------------------------------------------------------------------------------------- in-process
def test_an_error_midway_is_an_error_event(reference_vlm, reference, monkeypatch):
    """Pieces already sent cannot become an HTTP error: the failure is the stream's last event, without [DONE]."""
    from starlette.testclient import TestClient

    from toklip.serve import chat
    from toklip.serve.app import create_app
    from toklip.serve.settings import ServeSettings

    def failing(vlm, prepared, *, stream=False, **kwargs):
        def pieces():
            yield "half"
            raise RuntimeError("the GPU fell over")
        if not stream:
            raise RuntimeError("the GPU fell over")
        return pieces()

    with TestClient(create_app(reference, ServeSettings(), vlm=reference_vlm), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            pass
        monkeypatch.setattr(chat, "run_chat", failing)
        raw = client.post(CHAT, json={"messages": QUESTION, "stream": True}).text
        whole = client.post(CHAT, json={"messages": QUESTION})
    events = [json.loads(block[len("data: "):]) for block in raw.strip().split("\n\n")]
    assert events[0] == {"text": "half"}
    assert events[1]["error"]["status"] == 500 and events[1]["error"]["code"] == "internal_error"
    assert "GPU" not in raw and len(events) == 2  # details go to the log only; no [DONE]
    _error(whole, 500, "internal_error")  # not streamed: a plain 500


def test_the_stop_flag_ends_a_generation_at_the_next_token(reference_vlm):
    import threading

    from toklip.serve.chat import ChatEngine, ChatJob
    from toklip.vlm.serve_chat import ChatLimits, prepare_chat

    seen: list[tuple[str, int]] = []
    engine = ChatEngine(reference_vlm, ChatLimits(max_new_tokens=MAX_TOKENS),
                        on_reply=lambda mode, tokens, seconds: seen.append((mode, tokens)))
    prepared = prepare_chat(reference_vlm, None, QUESTION, engine.limits, max_new_tokens=MAX_TOKENS)
    stop = threading.Event()
    pieces: list[str] = []

    def emit(piece: str) -> None:
        pieces.append(piece)
        stop.set()  # the client leaves after the first piece

    result = engine.reply(ChatJob(prepared, stop, emit=emit))
    assert result.error is None and pieces and seen[-1][0] == "stopped"
    assert 1 <= result.new_tokens < MAX_TOKENS / 2  # the generation ended, not just the reading
    whole = engine.reply(ChatJob(prepared, threading.Event()))
    assert whole.new_tokens == MAX_TOKENS and seen[-1] == ("whole", MAX_TOKENS)  # the flag is what cut it
    assert engine.reply(ChatJob(prepared, stop)).new_tokens == 0 and len(seen) == 2  # left while queued: not run


def test_a_vlm_alone_is_served_with_its_own_toklip(vlm_folder, reference_vlm):
    from tests.serve.test_server import ref_tokenize

    proc = ServerProcess(["--vlm", str(vlm_folder), "--log-level", "warning", "--no-access-log"])
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            info = client.get("/v1/info").json()
            assert info["chat"]["name"] == "toklip-test + tiny-llama" and info["has_text"]
            r = client.post(CHAT, json={"messages": QUESTION, "image": _b64(_png(2)), "max_new_tokens": 6})
            assert r.status_code == 200 and r.json()["text"] == _expected(reference_vlm, _png(2), QUESTION, 6)
            tokens = client.post("/v1/tokenize", content=_png(2), headers={"Content-Type": "image/png"})
            assert tokens.status_code == 200, tokens.text  # the VLM's TokLIP answers the model's own routes
            assert tokens.json()["indices"] == ref_tokenize(reference_vlm.toklip, [_png(2)]).indices.tolist()
    finally:
        proc.stop()


def test_cli_errors_for_vlm_options(capsys, saved_model):
    for args, message in [([], "give --model"), (["--vlm", "x", "--random-weights"], "go with --model")]:
        with pytest.raises(SystemExit) as e:
            main(["serve", "--port", "0", *args])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "toklip-test", "--port", "0", "--max-chat-tokens", "0"])
    assert e.value.code == 2 and "--max-chat-tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "toklip-test", "--port", "0", "--vlm", str(saved_model[0])])  # a TokLIP folder
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "--vlm" in err and "neither a VLM folder" in err


def test_settings_bound_the_chat_tokens():
    from toklip.core.errors import ConfigError
    from toklip.serve.chat import chat_limits
    from toklip.serve.settings import ServeSettings

    assert chat_limits(ServeSettings()).max_new_tokens == 512
    small = chat_limits(ServeSettings(max_chat_tokens=16, max_image_pixels=100))
    assert (small.max_new_tokens, small.default_new_tokens, small.max_image_pixels) == (16, 16, 100)
    with pytest.raises(ConfigError, match="max_chat_tokens"):
        ServeSettings(max_chat_tokens=0)


# ---------------------------------------------------------------------------------------------- the page
def test_page_chats_about_an_image(browser, chat_server, tmp_path, reference_vlm):  # noqa: F811 - the fixture
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    upload = tmp_path / "digit.png"
    upload.write_bytes(_png(5))
    try:
        page.goto(chat_server.url + "/")
        page.wait_for_function("() => document.getElementById('chat').dataset.available === 'true'",
                               timeout=30_000)
        assert page.is_visible("#chat") and "tiny-llama" in page.inner_text("#chat-note")
        page.set_input_files("#chat-image", str(upload))
        page.fill("#chat-input", "what digit is this ?")
        page.click("#chat-send")
        page.wait_for_function("() => document.getElementById('status').textContent === 'done'", timeout=60_000)
        replies = page.locator("#chat-log li.assistant")
        assert replies.count() == 1
        assert replies.nth(0).inner_text() == _expected(reference_vlm, _png(5), QUESTION, 128)
        page.fill("#chat-input", "<image> again")  # refused by the server: its message is shown
        page.click("#chat-send")
        page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=30_000)
        assert "422" in page.inner_text("#status") and page.locator("#chat-log li").count() == 2
    finally:
        page.close()
    assert [p for p in problems if not p.startswith("console: Failed to load resource")] == []


def test_chat_panel_is_hidden_without_a_vlm(browser, server):  # noqa: F811 - the imported fixture
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        page.wait_for_function("() => document.getElementById('model').textContent.includes('toklip-test')",
                               timeout=30_000)
        assert page.get_attribute("#chat", "data-available") == "false" and not page.is_visible("#chat")
    finally:
        page.close()


def test_streamed_pieces_join_to_the_stripped_reply():
    from toklip.vlm.serve_chat import _stripped

    pieces = [" ", "  hello", " world ", " ", "again \n"]
    out = list(_stripped(iter(pieces)))
    assert "".join(out) == "".join(pieces).strip() and out == ["hello", " world", "  again"]
    assert list(_stripped(iter([" ", "\n"]))) == []

