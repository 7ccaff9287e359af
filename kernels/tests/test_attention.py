"""Triton attention vs the float64 reference, forward and backward, at tiny shapes (interpreter on CPU).

Shapes cover d = 72 (64 + 16 split), the other split widths, power-of-two dims, d < 16, odd N with masked
tails, N_q != N_k, per-batch key lengths with fully masked rows, and strided (packed qkv) layouts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toklip import InputError
from toklip_kernels.attention import attention_reference, flash_attention
from toklip_kernels.attention.reference import attention_mask

pytestmark = pytest.mark.triton_interpret


def _inputs(b, h, n_q, n_k, d, dtype, device, scale=1.0):
    q = (torch.randn(b, h, n_q, d) * scale).to(device, dtype).requires_grad_()
    k = (torch.randn(b, h, n_k, d) * scale).to(device, dtype).requires_grad_()
    v = torch.randn(b, h, n_k, d).to(device, dtype).requires_grad_()
    return q, k, v


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def _low_precision_baseline(q, k, v, causal, kv_lens, dout):
    """PyTorch's own error in the input dtype (SDPA math), the FA-style yardstick for fp16 tolerances."""
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    keep = attention_mask(q.shape[2], k.shape[2], causal=causal, kv_lens=kv_lens, batch=q.shape[0], device=q.device)
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=keep)
    if kv_lens is not None:  # SDPA gives NaN for empty rows; the contract is 0
        out = torch.nan_to_num(out)
    return out, _grads(out, (qs, ks, vs), dout)


def check_against_reference(q, k, v, *, causal, kv_lens=None, scale=None, fp32_grads="tight"):
    """fp32: outputs within 2e-5 of float64; gradients within 1e-4, or (``fp32_grads="pytorch"``, for logits so
    large that fp32 itself cannot do better) within 3x PyTorch's own fp32 error + 1e-4. fp16/bf16: PyTorch's
    error in that dtype is the yardstick."""
    out, lse = flash_attention(q, k, v, causal=causal, kv_lens=kv_lens, scale=scale, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    dout = torch.randn_like(out)
    grads = _grads(out, (q, k, v), dout)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_reference(*ref_in, causal=causal, kv_lens=kv_lens, scale=scale, return_lse=True)
    ref_grads = _grads(ref, ref_in, dout.double())
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(lse, ref_lse.float(), atol=1e-4, rtol=1e-4)
    if q.dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
        if fp32_grads == "tight":
            for name, g, r in zip("qkv", grads, ref_grads):
                torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4, msg=f"d{name}")
            return
        _, base_grads = _low_precision_baseline(q, k, v, causal, kv_lens, dout)
        for name, g, bg, r in zip("qkv", grads, base_grads, ref_grads):
            err, base = (g.double() - r).abs().max().item(), (bg.double() - r).abs().max().item()
            assert err <= 3 * base + 1e-4, f"d{name} error {err:.3g} vs PyTorch float32 error {base:.3g}"
        return
    base_out, base_grads = _low_precision_baseline(q, k, v, causal, kv_lens, dout)
    err = (out.double() - ref).abs().max().item()
    base = (base_out.double() - ref).abs().max().item()
    assert err <= 2 * base + 1e-3, f"out error {err:.3g} vs PyTorch {q.dtype} error {base:.3g}"
    for name, g, bg, r in zip("qkv", grads, base_grads, ref_grads):
        err = (g.double() - r).abs().max().item()
        base = (bg.double() - r).abs().max().item()
        assert err <= 3 * base + 2e-3, f"d{name} error {err:.3g} vs PyTorch {q.dtype} error {base:.3g}"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize(
    "b,h,n,d",
    [(1, 2, 37, 72), (2, 1, 64, 64), (1, 1, 33, 128), (1, 1, 45, 80), (1, 2, 20, 16), (1, 1, 19, 8), (1, 1, 30, 96),
     (1, 1, 24, 40), (1, 1, 1, 72)],
)
def test_fp32_matches_reference(b, h, n, d, causal, device):
    check_against_reference(*_inputs(b, h, n, n, d, torch.float32, device), causal=causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("b,h,n,d", [(1, 2, 50, 72), (2, 1, 33, 64)])
def test_fp16_within_fa_bounds(b, h, n, d, causal, device):
    check_against_reference(*_inputs(b, h, n, n, d, torch.float16, device), causal=causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("n_q,n_k", [(20, 35), (35, 20)])
def test_different_query_and_key_lengths(n_q, n_k, causal, device):
    """Causal is top-left aligned (query i sees keys <= i), as SDPA's is_causal."""
    check_against_reference(*_inputs(1, 2, n_q, n_k, 72, torch.float32, device), causal=causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_key_lengths_and_fully_masked_rows(causal, device):
    q, k, v = _inputs(3, 2, 40, 40, 72, torch.float32, device)
    kv_lens = torch.tensor([0, 5, 40], device=device)
    check_against_reference(q, k, v, causal=causal, kv_lens=kv_lens)
    out, lse = flash_attention(q, k, v, causal=causal, kv_lens=kv_lens, return_lse=True)
    assert torch.equal(out[0], torch.zeros_like(out[0])), "a row with no visible key must be 0, not NaN"
    assert torch.isneginf(lse[0]).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert dq[0].abs().max() == 0 and dk[0].abs().max() == 0 and dv[0].abs().max() == 0
    assert dk[1, :, 5:].abs().max() == 0 and dv[1, :, 5:].abs().max() == 0, "masked keys must get zero gradient"


def test_large_logits_stay_finite(device):
    """Logits of ~1e2: fp32 gradients cannot be within 1e-4 of float64 (PyTorch's SDPA misses by ~5e-4 too)."""
    check_against_reference(*_inputs(1, 1, 40, 40, 72, torch.float32, device, scale=12.0), causal=True,
                            fp32_grads="pytorch")


def test_custom_scale(device):
    check_against_reference(*_inputs(1, 2, 29, 29, 72, torch.float32, device), causal=True, scale=0.05)


def test_packed_qkv_views_need_no_copy(device):
    """The views a fused qkv projection gives ([B, N, 3, H, d] permuted) match contiguous inputs exactly."""
    b, n, h, d = 2, 27, 3, 72
    qkv = torch.randn(b, n, 3, h, d).to(device)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert q.stride(-1) == 1 and not q.is_contiguous()
    got = flash_attention(q, k, v, causal=True)
    want = flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(got, want)
    assert got.transpose(1, 2).is_contiguous(), "output memory should be [B, N, H, d]"


def test_non_unit_last_stride_is_handled(device):
    q, k, v = (torch.randn(1, 2, 21, 72 * 2).to(device)[..., ::2] for _ in range(3))
    torch.testing.assert_close(flash_attention(q, k, v, causal=False),
                               attention_reference(q, k, v, causal=False), atol=2e-5, rtol=1e-4)


def test_backward_is_deterministic(device):
    q, k, v = _inputs(1, 2, 45, 45, 72, torch.float32, device)
    dout = torch.randn(1, 2, 45, 72).to(device)
    first = _grads(flash_attention(q, k, v, causal=True), (q, k, v), dout)
    second = _grads(flash_attention(q, k, v, causal=True), (q, k, v), dout)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_causal_does_not_leak_future_tokens(device):
    q, k, v = (torch.randn(1, 1, 33, 72).to(device) for _ in range(3))
    base = flash_attention(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] += 1.0
    v2[:, :, 20:] += 1.0
    poked = flash_attention(q, k2, v2, causal=True)
    assert torch.equal(poked[:, :, :20], base[:, :, :20])
    assert not torch.allclose(poked[:, :, 20:], base[:, :, 20:])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda dev: (torch.randn(2, 3, 8, device=dev),) * 3, "B, H, N, d"),
        (lambda dev: (torch.randn(1, 2, 8, 16, device=dev), torch.randn(1, 3, 8, 16, device=dev),
                      torch.randn(1, 3, 8, 16, device=dev)), "must match"),
        (lambda dev: (torch.randn(1, 2, 8, 16, device=dev), torch.randn(1, 2, 9, 16, device=dev),
                      torch.randn(1, 2, 8, 16, device=dev)), "same sequence length"),
        (lambda dev: (torch.randn(1, 1, 4, 300, device=dev),) * 3, "maximum"),
        (lambda dev: (torch.randn(1, 1, 4, 16, device=dev), torch.randn(1, 1, 4, 16, device=dev).half(),
                      torch.randn(1, 1, 4, 16, device=dev)), "share a dtype"),
    ],
)
def test_bad_inputs_raise_input_error(make, match, device):
    with pytest.raises(InputError, match=match):
        flash_attention(*make(device))


def test_bad_kv_lens(device):
    q = torch.randn(2, 1, 4, 16, device=device)
    with pytest.raises(InputError, match="kv_lens"):
        flash_attention(q, q, q, kv_lens=torch.tensor([1.0, 2.0], device=device))
    with pytest.raises(InputError, match="kv_lens"):
        flash_attention(q, q, q, kv_lens=torch.tensor([1], device=device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter's dtype guard")
def test_bf16_is_refused_in_the_interpreter():
    q = torch.randn(1, 1, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(InputError, match="bfloat16"):
        flash_attention(q, q, q)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(InputError, match="CUDA device"):
        flash_attention(q, q, q)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_never_reads_outside_its_inputs(causal, device):
    """q, k, v are views into NaN-filled buffers (extra rows and head-dim columns): any load that is not masked
    to the real extent pulls a NaN into the result."""
    b, h, n, d = 1, 2, 37, 72

    def fenced():
        buf = torch.full((b, h, n + 9, d + 8), float("nan"), device=device)
        view = buf[:, :, 3:3 + n, :d]
        view.copy_(torch.randn(b, h, n, d))
        return view.detach().requires_grad_()  # a leaf that still lives inside the NaN buffer

    q, k, v = (fenced() for _ in range(3))
    assert q.stride(2) == d + 8 and not torch.isnan(q).any()
    out = flash_attention(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, attention_reference(q, k, v, causal=causal), atol=2e-5, rtol=1e-4)
