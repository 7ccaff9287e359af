"""Real `toklip serve` processes on free loopback ports, started once per session and always stopped.

`server` serves a saved toklip-test model whose weights the tests also hold in-process (`reference`), so
answers can be checked against the library. `limited_server` has an API key and tiny limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="toklip serve needs the serve extra: pip install 'toklip[serve]'")
pytest.importorskip("uvicorn", reason="toklip serve needs the serve extra: pip install 'toklip[serve]'")
httpx = pytest.importorskip("httpx", reason="the serving tests talk HTTP with httpx: pip install 'toklip[serve]'")

from toklip.serve.process import ServerProcess  # noqa: E402

API_KEY = "test-key-\u00e9-not-secret"
API_KEY_ENV = "TOKLIP_TEST_SERVE_KEY"


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory):
    """(folder written by save_pretrained, the same model in this process)."""
    from toklip.testing import saved_tiny_model

    folder = tmp_path_factory.mktemp("served") / "toklip-test-saved"
    model = saved_tiny_model(folder)
    return folder, model


@pytest.fixture(scope="session")
def reference(saved_model):
    return saved_model[1]


@pytest.fixture(scope="session")
def server(saved_model) -> Iterator[ServerProcess]:
    folder: Path = saved_model[0]
    proc = ServerProcess(["--model", str(folder), "--max-wait-ms", "2", "--max-batch", "16", "--log-level", "warning",
                          "--no-access-log"])
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def limited_server() -> Iterator[ServerProcess]:
    """API key, 2 items per request, 2 queued items, 256 KiB bodies, 100k-pixel images, 3 s requests.

    Batches wait up to 6 s for company, so a lone request outlives the 3 s timeout: that makes the queue and
    timeout behaviour deterministic without sleeping.
    """
    args = ["--model", "toklip-test", "--api-key-env", API_KEY_ENV, "--max-request-items", "2", "--max-queue", "2",
            "--max-body-mb", "0.25", "--max-image-pixels", "100000", "--max-wait-ms", "6000", "--max-batch", "64",
            "--request-timeout", "3", "--log-level", "warning", "--no-access-log"]
    proc = ServerProcess(args, env={API_KEY_ENV: API_KEY})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def limited_http(limited_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited_server.url, timeout=30,
                      headers={"Authorization": b"Bearer " + API_KEY.encode()}) as client:
        yield client
