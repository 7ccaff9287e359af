"""CUDA runs (skipped without a GPU): fp32 parity with the fixture, and bfloat16 weights (as released)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toklip_plugin_cosmos.model import build_cosmos

pytestmark = pytest.mark.gpu
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def cuda_tokenizer():
    release = [FIXTURES / "encoder.jit", FIXTURES / "decoder.jit"]
    return build_cosmos(config=FIXTURES / "config.json", checkpoint=release).cuda()


def test_cuda_fp32_matches_the_fixture(cuda_tokenizer, vectors, no_tf32):
    with torch.no_grad():
        enc = cuda_tokenizer.encode(vectors["image"].cuda())
        decoded = cuda_tokenizer.decode(enc.indices).cpu()
    assert enc.indices.device.type == "cuda" and enc.indices.dtype == torch.int64
    assert torch.equal(enc.indices.cpu(), vectors["indices"])
    assert torch.equal(enc.codes.reshape(2, 16, 6).cpu(), vectors["codes"])
    err = (decoded - vectors["decoded"]).abs().max().item()
    assert err <= 1e-4 * vectors["decoded"].abs().max().item()


def test_cuda_bfloat16_weights_keep_float32_codes(cuda_tokenizer, vectors):
    vq = cuda_tokenizer.to(torch.bfloat16)
    with torch.no_grad():
        enc = vq.encode(vectors["image"].cuda().to(torch.bfloat16))
        out = vq.decode(enc.indices)
    assert enc.codes.dtype == torch.float32 and enc.indices.dtype == torch.int64
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
