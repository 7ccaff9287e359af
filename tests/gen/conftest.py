"""LlamaGen GPT parity fixtures (tests/fixtures/llamagen-gpt, copied from shared/): models loaded once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llamagen-gpt"
KINDS = ("gpt-c2i", "gpt-t2i")


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """The fixtures were made with one thread; one thread is also fastest for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fixture_dir(kind: str) -> Path:
    return FIXTURES / kind


def fixture_config(kind: str) -> dict:
    return json.loads((fixture_dir(kind) / "config.json").read_text())


def fixture_vectors(kind: str) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_dir(kind) / "vectors.safetensors"))


def load_fixture_model(kind: str):
    from toklip.gen import load_gpt

    folder = fixture_dir(kind)
    return load_gpt(folder / "gpt.pt", folder / "config.json")


@pytest.fixture(scope="package", params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="package")
def fixture_models() -> dict:
    """kind -> GPT loaded from the fixture (eval mode; tests that change it build their own)."""
    return {k: load_fixture_model(k) for k in KINDS}


@pytest.fixture(scope="package")
def vectors_of() -> dict:
    return {k: fixture_vectors(k) for k in KINDS}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|: the README's tolerance measure."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
