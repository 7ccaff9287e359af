"""``sample(..., compile=True)`` (the GPT's decode step under torch.compile) draws exactly what eager sampling draws."""

from __future__ import annotations

import pytest
import torch

import toklip

pytestmark = pytest.mark.slow  # inductor compiles C++ on CPU: ~25 s


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    model = toklip.build_generator("gpt-test", num_classes=10)
    for p in model.parameters():  # LlamaGen's init zeroes the head: every logit would tie
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("options", [{"greedy": True}, {"seed": 0, "top_k": 50}, {"seed": 1, "cfg": 2.0}])
def test_compiled_sampling_equals_eager(gen, options):
    eager = gen.sample([1, 2, 3], **options)
    assert torch.equal(gen.sample([1, 2, 3], compile=True, **options), eager)
    assert torch.equal(gen.sample([1, 2, 3], compile=True, **options), eager)  # the compiled graphs are reused
