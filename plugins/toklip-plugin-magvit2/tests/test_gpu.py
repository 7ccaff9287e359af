"""CUDA runs (skipped without a GPU): fp32 parity with the fixture, and bfloat16 weights."""

from __future__ import annotations

import pytest
import torch

from toklip_plugin_magvit2.model import build_magvit2

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda_tokenizer(fixtures):
    return build_magvit2(config=fixtures / "config.json", checkpoint=fixtures / "model.ckpt").cuda()


def test_cuda_fp32_matches_the_fixture(cuda_tokenizer, vectors, no_tf32):
    with torch.no_grad():
        enc = cuda_tokenizer.encode(vectors["image"].cuda())
        decoded = cuda_tokenizer.decode(enc.indices).cpu()
    assert enc.indices.device.type == "cuda" and enc.indices.dtype == torch.int64
    assert torch.equal(enc.indices.reshape(2, -1).cpu(), vectors["indices_bn"])
    assert torch.equal(enc.codes.reshape(2, 16, 18).cpu(), vectors["codes"])
    torch.testing.assert_close(decoded, vectors["decoded"], rtol=1e-4, atol=1e-4)


def test_cuda_bfloat16_weights(cuda_tokenizer, vectors):
    vq = cuda_tokenizer.to(torch.bfloat16)
    with torch.no_grad():
        enc = vq.encode(vectors["image"].cuda().to(torch.bfloat16))
        out = vq.decode(enc.indices)
    assert enc.codes.dtype == torch.float32 and enc.indices.dtype == torch.int64
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
