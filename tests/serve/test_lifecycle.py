"""Start-up and shutdown: the CLI's errors, readiness, and a SIGTERM that lets in-flight requests finish."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time

import httpx
import pytest

from toklip.cli import main
from toklip.serve.process import ServerProcess


def _queue_depth(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("toklip_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no toklip_queue_depth in /metrics")


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests():
    """A request held in the batch window when SIGTERM arrives is still answered 200; then the process exits."""
    proc = ServerProcess(["--model", "toklip-test", "--max-wait-ms", "3000", "--max-batch", "64",
                          "--log-level", "info", "--no-access-log"])
    try:
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=30) as client, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert client.get("/readyz").status_code == 200
            pending = pool.submit(client.post, "/v1/embed/text", json={"texts": ["still answered"]})
            deadline = time.monotonic() + 2.5
            while _queue_depth(client) < 1 and time.monotonic() < deadline:
                pass
            assert _queue_depth(client) == 1, "the request should be waiting in the queue"
            proc.signal()  # SIGTERM
            r = pending.result(timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["embeddings"][0]) == r.json()["dim"]
        # uvicorn finishes its shutdown, then re-raises the captured SIGTERM (exit status -15), as process
        # managers expect; the log shows the orderly shutdown happened first
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Waiting for application shutdown" in proc.output and "Finished server process" in proc.output
    finally:
        proc.stop()


def test_unknown_model_fails_fast_with_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "toklip-tset", "--port", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown preset 'toklip-tset'" in err and "toklip-test" in err


def test_missing_api_key_variable_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("TOKLIP_NO_SUCH_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "toklip-test", "--api-key-env", "TOKLIP_NO_SUCH_KEY"])
    assert e.value.code == 2
    assert "TOKLIP_NO_SUCH_KEY" in capsys.readouterr().err


def test_bad_limits_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "toklip-test", "--max-request-items", "64", "--max-queue", "8"])
    assert e.value.code == 2
    assert "could never be queued" in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["serve", "--model", "toklip-test", "--port", str(port)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_server_process_reports_a_failed_start():
    proc = ServerProcess(["--model", "definitely/not/here.json"], ready_timeout_s=120)
    with pytest.raises(RuntimeError, match="does not exist"):
        proc.start()
    assert not proc.alive()
