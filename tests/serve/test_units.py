"""In-process checks of the serving pieces: settings, the batcher, the middleware, input parsing, model
loading. Deterministic (events, not timing) and fast."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest
import torch

import toklip
from toklip.core.errors import ConfigError, InputError, UnknownComponentError
from toklip.serve.batcher import Batcher, QueueFull, ShuttingDown
from toklip.serve.errors import APIError
from toklip.serve.inputs import decode_base64, indices_from_json, read_index_file
from toklip.model.loading import load_model, resolve_device, resolve_dtype
from toklip.serve.metrics import Metrics
from toklip.serve.middleware import LimitsMiddleware
from toklip.serve.settings import ServeSettings


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_batch": 0}, "max_batch must be a positive integer"),
    ({"max_queue": -1}, "max_queue"),
    ({"max_body_bytes": 1.5}, "max_body_bytes"),
    ({"max_wait_ms": -1}, "max_wait_ms"),
    ({"request_timeout_s": 0}, "request_timeout_s"),
    ({"max_request_items": 10, "max_queue": 5}, "could never be queued"),
    ({"api_key": ""}, "API key is empty"),
])
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ServeSettings(**kwargs)


def test_settings_repr_hides_the_key():
    assert "sekret" not in repr(ServeSettings(api_key="sekret"))


# ---------------------------------------------------------------- batcher
class Recorder:
    """A runner that records the batches it sees and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, payloads: list) -> list:
        self.entered.set()
        assert self.gate.wait(10), "test runner was never released"
        self.batches.append(list(payloads))
        for p in payloads:
            if p == "boom":
                raise InputError("bad payload")
        return [f"done:{p}" for p in payloads]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_jobs_share_a_batch_while_the_model_is_busy():
    async def main():
        rec = Recorder()
        b = Batcher({"op": rec}, max_batch=8, max_wait_s=0.0, max_queue=100)
        b.start()
        rec.gate.clear()
        first = asyncio.ensure_future(b.submit("op", "a", 1))
        while not rec.entered.is_set():  # the model thread has taken job "a" and is held
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(b.submit("op", p, 1)) for p in "bcd"]
        await asyncio.sleep(0)
        assert b.depth == 3
        rec.gate.set()
        results = await asyncio.gather(first, *rest)
        await b.close()
        return rec.batches, results

    batches, results = _run(main())
    assert batches == [["a"], ["b", "c", "d"]]
    assert results == ["done:a", "done:b", "done:c", "done:d"]


def test_chat_jobs_never_share_a_model_call():
    """Replies queued together run one per call (each answered when done), while other ops still batch."""
    calls: list[tuple[str, list]] = []

    def runner(op):
        def run(payloads):
            calls.append((op, list(payloads)))
            return payloads
        return run

    async def main():
        b = Batcher({"chat": runner("chat"), "text": runner("text")}, max_batch=8, max_wait_s=5.0, max_queue=100,
                    op_batch={"chat": 1})
        b.start()
        texts = [asyncio.ensure_future(b.submit("text", i, 4)) for i in range(2)]  # fill a batch of 8: no wait
        chats = [asyncio.ensure_future(b.submit("chat", i, 1)) for i in range(3)]  # no wait for company either
        out = await asyncio.wait_for(asyncio.gather(*texts, *chats), 4)  # not the 5 s wait for company
        await b.close()
        return out

    assert _run(main()) == [0, 1, 0, 1, 2]
    assert ("text", [0, 1]) in calls and [c for c in calls if c[0] == "chat"] == [("chat", [0]), ("chat", [1]),
                                                                                  ("chat", [2])]


def test_batches_respect_max_batch_and_wait_for_company():
    async def main():
        rec = Recorder()
        b = Batcher({"op": rec}, max_batch=4, max_wait_s=5.0, max_queue=100)
        b.start()
        jobs = [asyncio.ensure_future(b.submit("op", i, 2)) for i in range(3)]  # 2 items each
        out = await asyncio.gather(*jobs[:2])  # the first two fill a batch of 4 at once, no 5 s wait
        assert out == ["done:0", "done:1"]
        jobs[2].cancel()
        await asyncio.gather(jobs[2], return_exceptions=True)
        await b.close()
        return rec.batches

    assert _run(main()) == [[0, 1]]


def test_queue_bound_and_cancelled_jobs_free_their_slots():
    async def main():
        rec = Recorder()
        b = Batcher({"op": rec}, max_batch=64, max_wait_s=30.0, max_queue=3)
        b.start()
        waiting = asyncio.ensure_future(b.submit("op", "x", 2))
        await asyncio.sleep(0)
        assert b.depth == 2
        with pytest.raises(QueueFull, match="limit of 3"):
            await b.submit("op", "y", 2)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert b.depth == 0
        await b.close()
        with pytest.raises(ShuttingDown):
            await b.submit("op", "z", 1)
        return rec.batches

    assert _run(main()) == []  # the cancelled job never reached the model


def test_one_failing_job_fails_alone():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        b = Batcher({"op": rec}, max_batch=8, max_wait_s=0.0, max_queue=100)
        b.start()
        first = asyncio.ensure_future(b.submit("op", "a", 1))
        while not rec.entered.is_set():
            await asyncio.sleep(0)
        others = [asyncio.ensure_future(b.submit("op", p, 1)) for p in ("ok1", "boom", "ok2")]
        await asyncio.sleep(0)
        rec.gate.set()
        results = await asyncio.gather(first, *others, return_exceptions=True)
        await b.close()
        return results

    results = _run(main())
    assert results[0] == "done:a" and results[1] == "done:ok1" and results[3] == "done:ok2"
    assert isinstance(results[2], InputError)


def test_operations_are_batched_separately_oldest_first():
    async def main():
        img, txt = Recorder(), Recorder()
        b = Batcher({"image": img, "text": txt}, max_batch=8, max_wait_s=0.05, max_queue=100)
        b.start()
        jobs = [b.submit("text", "t1", 1), b.submit("image", "i1", 1), b.submit("text", "t2", 1)]
        out = await asyncio.gather(*jobs)
        await b.close()
        return img.batches, txt.batches, out

    img, txt, out = _run(main())
    assert txt == [["t1", "t2"]] and img == [["i1"]] and out == ["done:t1", "done:i1", "done:t2"]


def test_close_runs_queued_jobs_at_once():
    async def main():
        rec = Recorder()
        b = Batcher({"op": rec}, max_batch=8, max_wait_s=30.0, max_queue=100)
        b.start()
        job = asyncio.ensure_future(b.submit("op", "queued", 1))
        await asyncio.sleep(0)
        await b.close(drain_timeout_s=10.0)  # does not wait the 30 s batch window
        return await job

    assert _run(main()) == "done:queued"


def test_close_fails_jobs_that_do_not_finish_in_time():
    async def main():
        rec = Recorder()
        rec.gate.clear()
        b = Batcher({"op": rec}, max_batch=1, max_wait_s=0.0, max_queue=100)
        b.start()
        running = asyncio.ensure_future(b.submit("op", "stuck", 1))
        while not rec.entered.is_set():
            await asyncio.sleep(0)
        queued = asyncio.ensure_future(b.submit("op", "next", 1))
        await asyncio.sleep(0)
        await b.close(drain_timeout_s=0.01)
        rec.gate.set()
        return await asyncio.gather(running, queued, return_exceptions=True)

    results = _run(main())
    assert all(isinstance(r, ShuttingDown) for r in results), results


# ---------------------------------------------------------------- middleware, in process
def _limits_app(settings: ServeSettings, release: asyncio.Event | None = None):
    async def app(scope, receive, send):
        if release is not None:
            await release.wait()
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    return LimitsMiddleware(app, settings=settings, metrics=Metrics())


def test_concurrency_limit_answers_503_at_once():
    async def main():
        release = asyncio.Event()
        app = _limits_app(ServeSettings(max_concurrency=1), release)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            held = asyncio.ensure_future(client.post("/v1/x", content=b"abc"))
            while app.in_flight == 0:
                await asyncio.sleep(0)
            refused = await client.post("/v1/x", content=b"abc")
            release.set()
            return refused, await held

    refused, held = _run(main())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert held.status_code == 200 and held.text == "3"


def test_slow_upload_gets_408():
    async def main():
        app = _limits_app(ServeSettings(request_timeout_s=0.05))
        sent: list[dict] = []
        never = asyncio.Event()

        async def receive():
            await never.wait()

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/v1/tokenize", "method": "POST", "headers": []}
        await app(scope, receive, send)
        return sent

    sent = _run(main())
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


def test_cors_can_be_enabled_for_named_origins(reference):
    from toklip.serve.app import create_app

    app = create_app(reference, ServeSettings(cors_origins=("https://ok.example",)))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            headers = {"Access-Control-Request-Method": "POST"}
            ok = await client.options("/v1/tokenize", headers={**headers, "Origin": "https://ok.example"})
            bad = await client.options("/v1/tokenize", headers={**headers, "Origin": "https://evil.example"})
            return ok, bad

    ok, bad = _run(main())
    assert ok.headers["access-control-allow-origin"] == "https://ok.example"
    assert "access-control-allow-origin" not in bad.headers


# ---------------------------------------------------------------- input helpers
def test_base64_and_index_parsing():
    assert decode_base64("data:image/png;base64,aGVs\nbG8=", 0) == b"hello"
    with pytest.raises(APIError, match="URL"):
        decode_base64("http://x/y.png", 0)
    assert indices_from_json([[1, 2], [3, 4]]).dtype == np.int64
    for bad in ([[1, 2], [3]], [[1.5]], [[True]], [["1"]], [], [[]], [1, 2], [[[[1]]]]):
        with pytest.raises(APIError) as e:
            indices_from_json(bad)
        assert e.value.status == 422


def test_index_files():
    import io

    from safetensors.numpy import save

    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.int32).reshape(1, 4))
    assert read_index_file(buf.getvalue(), "application/x-npy").tolist() == [[0, 1, 2, 3]]
    st = save({"indices": np.zeros((2, 4), np.int64)})
    assert read_index_file(st, "application/octet-stream").shape == (2, 4)
    with pytest.raises(APIError, match="empty"):
        read_index_file(b"", "application/x-npy")
    with pytest.raises(APIError, match="no .x93NUMPY magic"):
        read_index_file(st, "application/x-npy")


# ---------------------------------------------------------------- model loading
def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")


def test_load_model_sources(tmp_path, fixtures_dir):
    preset = load_model("toklip-test", device="cpu")
    assert preset.config.name == "toklip-test" and not preset.training
    folder = preset.save_pretrained(tmp_path / "saved")
    again = load_model(str(folder), device="cpu")
    assert torch.equal(again.logit_scale, preset.logit_scale)
    assert torch.equal(again.projector.state_dict()["fc1.weight"], preset.projector.state_dict()["fc1.weight"])
    # a config.json plus an official checkpoint
    d = fixtures_dir / "official-toklip"
    official = load_model(str(d / "config.json"), weights=str(d / "official_state.pt"), device="cpu")
    ref = toklip.load_official(d / "official_state.pt", config=d / "config.json")
    for k, v in ref.state_dict().items():
        if not k.startswith("fusion."):  # toklip's own layers: never in an official file, randomly initialised
            assert torch.equal(official.state_dict()[k], v), k
    # bfloat16 everywhere except the VQ tokenizer
    half = load_model("toklip-test", device="cpu", dtype="bfloat16")
    assert half.dtype is torch.bfloat16 and next(half.vq.parameters()).dtype is torch.float32
    with torch.inference_mode():
        out = half.tokenize(torch.zeros(1, 3, 64, 64))
        assert out.indices.shape == (1, 64) and half.decode(out.indices).dtype is torch.float32


def test_load_model_errors(tmp_path, fixtures_dir):
    with pytest.raises(UnknownComponentError, match="toklip-test"):
        load_model("toklip-tset", device="cpu")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model("models/missing.pt", device="cpu")
    d = fixtures_dir / "official-toklip"
    with pytest.raises(ConfigError, match="--model CONFIG.json --weights"):
        load_model(str(d / "official_state.pt"), device="cpu")
    with pytest.raises(ConfigError, match="already a checkpoint"):
        load_model(str(d / "official_state.pt"), weights=str(d / "official_state.pt"), device="cpu")
    folder = toklip.build("toklip-test").save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="drop --weights"):
        load_model(str(folder), weights="x.pt", device="cpu")


# ---------------------------------------------------------------- readiness
def _lifespan_client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_readyz_turns_200_after_warm_up(reference):
    from toklip.serve.app import create_app
    from toklip.serve.engine import Engine

    gate = threading.Event()

    class HeldEngine(Engine):
        def warm_up(self) -> None:
            assert gate.wait(20)
            super().warm_up()

    async def main():
        ready = asyncio.Event()
        app = create_app(HeldEngine(reference, max_batch=4), ServeSettings(), on_ready=lambda s: ready.set())
        async with app.router.lifespan_context(app), _lifespan_client(app) as client:
            before, health = await client.get("/readyz"), await client.get("/healthz")
            gate.set()
            await ready.wait()
            after = await client.get("/readyz")
            text = await client.post("/v1/embed/text", json={"texts": ["hi"]})
        return before, health, after, text

    before, health, after, text = _run(main())
    assert before.status_code == 503 and before.json()["error"]["message"] == "warming up"
    assert health.status_code == 200
    assert after.status_code == 200 and after.json() == {"status": "ready", "model": "toklip-test"}
    assert text.status_code == 200


def test_failed_warm_up_is_reported_not_hidden(reference, caplog):
    """Reported (the exception type, 503) but its text, which can hold paths and device details, is logged only."""
    from toklip.serve.app import create_app
    from toklip.serve.engine import Engine

    class BrokenEngine(Engine):
        def warm_up(self) -> None:
            raise RuntimeError("out of memory (simulated)")

    async def main():
        app = create_app(BrokenEngine(reference, max_batch=4), ServeSettings())
        state = app.state.toklip
        async with app.router.lifespan_context(app), _lifespan_client(app) as client:
            while state.warmup_error is None:
                await asyncio.sleep(0)
            return await client.get("/readyz"), await client.post("/v1/embed/text", json={"texts": ["hi"]})

    with caplog.at_level("ERROR", logger="toklip.serve"):
        ready, text = _run(main())
    message = ready.json()["error"]["message"]
    assert ready.status_code == 503 and "RuntimeError" in message and "server log" in message
    assert "out of memory (simulated)" not in message + text.text
    assert "out of memory (simulated)" in caplog.text
    assert text.status_code == 503 and text.json()["error"]["code"] == "not_ready"
