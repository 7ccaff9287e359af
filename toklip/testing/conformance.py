"""Conformance checks every component of a kind must pass: shapes, dtypes, determinism, a state-dict round
trip, clear errors on bad input, and a composed-model smoke test. Plugin authors call these from their own
tests on their ``*-test`` variants; toklip's contract tests run them over every registered ``*-test`` name.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from toklip.core.errors import InputError
from toklip.core.host import get_spec


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _roundtrip(module: torch.nn.Module, make: Any) -> torch.nn.Module:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh = make()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return fresh.eval()


def check_vq_tokenizer(name: str, *, grid: int = 4, batch: int = 2, **kwargs: Any) -> None:
    spec = get_spec("vq", name)
    make = lambda: spec.create(**kwargs)  # noqa: E731
    vq = make().eval()
    for attr in ("code_dim", "vocab_size", "downsample"):
        value = getattr(vq, attr, None)
        assert isinstance(value, int) and value > 0, f"{name}: attribute {attr} must be a positive int, got {value!r}"
    size = grid * vq.downsample
    images = torch.rand(batch, 3, size, size, generator=_seeded()) * 2 - 1
    with torch.no_grad():
        enc = vq.encode(images)
        enc2 = vq.encode(images)
    assert enc.indices.shape == (batch, grid, grid), f"{name}: indices shape {tuple(enc.indices.shape)}"
    assert enc.indices.dtype == torch.int64, f"{name}: indices must be int64, got {enc.indices.dtype}"
    assert int(enc.indices.min()) >= 0 and int(enc.indices.max()) < vq.vocab_size, f"{name}: indices out of range"
    assert enc.codes.shape == (batch, grid, grid, vq.code_dim), f"{name}: codes shape {tuple(enc.codes.shape)}"
    assert torch.equal(enc.indices, enc2.indices), f"{name}: encode is not deterministic in eval mode"
    with torch.no_grad():
        codes = vq.indices_to_codes(enc.indices)
        torch.testing.assert_close(codes.float(), enc.codes.float(), atol=1e-5, rtol=1e-5,
                                   msg=f"{name}: indices_to_codes(indices) must equal the encoded codes")
        decoded = vq.decode(enc.indices)
        flat = vq.decode(enc.indices.reshape(batch, -1))
    assert decoded.shape == (batch, 3, size, size), f"{name}: decode shape {tuple(decoded.shape)}"
    assert torch.isfinite(decoded).all(), f"{name}: decode produced non-finite values"
    torch.testing.assert_close(decoded, flat, msg=f"{name}: decode must accept [B, N] and [B, h, w] alike")
    table = vq.code_table()
    if table is not None:
        assert table.shape == (vq.vocab_size, vq.code_dim), f"{name}: code_table shape {tuple(table.shape)}"
    fresh = _roundtrip(vq, make)
    with torch.no_grad():
        assert torch.equal(fresh.encode(images).indices, enc.indices), f"{name}: state_dict round trip changed it"
    _expect_input_error(lambda: vq.encode(images[:, :1]), f"{name}: 1-channel images")
    _expect_input_error(lambda: vq.encode(images[..., : size - 1]), f"{name}: size not a multiple of downsample")
    _expect_input_error(lambda: vq.encode(images * 300), f"{name}: 0..255-range images")
    bad = enc.indices.clone()
    bad[0, 0, 0] = vq.vocab_size
    _expect_input_error(lambda: vq.decode(bad), f"{name}: out-of-range indices")
    bad[0, 0, 0] = -1
    _expect_input_error(lambda: vq.decode(bad), f"{name}: negative indices")
    _compose(vq={"name": name, **kwargs}, encoder="siglip2-test", image_size=size * 2)


def check_encoder(name: str, *, grid: int = 4, **kwargs: Any) -> None:
    spec = get_spec("encoder", name)
    enc = spec.create(**kwargs)
    for attr in ("embed_dim", "patch_size", "image_size", "mean", "std", "init_logit_scale"):
        assert hasattr(enc, attr), f"{name}: missing attribute {attr}"
    te = enc.build_token_encoder((grid, grid)).eval()
    n = grid * grid
    tokens = torch.randn(2, n, te.width, generator=_seeded())
    with torch.no_grad():
        f_causal = te.token_features(te.forward_features(tokens, causal=True))
        f_bidir = te.token_features(te.forward_features(tokens, causal=False))
        pooled = te.pool(te.forward_features(tokens, causal=True))
        assert f_causal.shape == (2, n, te.width), f"{name}: features shape {tuple(f_causal.shape)}"
        assert pooled.shape == (2, enc.embed_dim), f"{name}: pooled shape {tuple(pooled.shape)}"
        k = n // 2
        poked = tokens.clone()
        poked[:, k] += torch.randn(te.width, generator=_seeded(3))  # not a constant: LayerNorm removes those
        g_causal = te.token_features(te.forward_features(poked, causal=True))
        assert torch.equal(g_causal[:, :k], f_causal[:, :k]), f"{name}: causal mode leaks future tokens"
        assert not torch.allclose(g_causal[:, k:], f_causal[:, k:]), f"{name}: perturbation had no effect"
        g_bidir = te.token_features(te.forward_features(poked, causal=False))
        assert not torch.allclose(g_bidir[:, :k], f_bidir[:, :k]), f"{name}: bidirectional mode must mix all tokens"
    text = enc.build_text_tower()
    if text is not None:
        ids = torch.randint(0, enc.vocab_size, (3, enc.context_length), generator=_seeded())
        with torch.no_grad():
            out = text.eval()(ids)
        assert out.shape == (3, enc.embed_dim), f"{name}: text tower output {tuple(out.shape)}"
    teacher = enc.build_teacher()
    images = torch.rand(2, 3, enc.image_size, enc.image_size, generator=_seeded()) * 2 - 1
    with torch.no_grad():
        t_out = teacher(images)
    assert t_out.shape == (2, enc.embed_dim), f"{name}: teacher output {tuple(t_out.shape)}"
    _compose(vq="llamagen-test", encoder={"name": name, **kwargs})


def check_projector(name: str, *, code_dim: int = 8, vocab_size: int = 64, width: int = 32, **kwargs: Any) -> None:
    spec = get_spec("projector", name)
    if spec.name.startswith("identity"):
        width = code_dim
    proj = spec.create(code_dim=code_dim, vocab_size=vocab_size, width=width, **kwargs)
    indices = torch.randint(0, vocab_size, (2, 16), generator=_seeded())
    table = torch.nn.functional.normalize(torch.randn(vocab_size, code_dim, generator=_seeded(1)), dim=-1)
    codes = table[indices].requires_grad_(True)
    out = proj(codes, indices, lambda: table)
    assert out.shape == (2, 16, width), f"{name}: output shape {tuple(out.shape)}"
    params = [p for p in proj.parameters() if p.requires_grad]
    if params:
        out.float().pow(2).mean().backward()
        assert all(p.grad is not None for p in params), f"{name}: some parameters get no gradient"


def check_attn_backend(name: str, *, reference: str = "eager", device: str | None = None,
                       dtype: torch.dtype = torch.float32, atol: float = 2e-5, rtol: float = 1e-4) -> None:
    impl = get_spec("attn_backend", name).create()
    ref = get_spec("attn_backend", reference).create()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for n, d in [(17, 16), (64, 72)]:
        q, k, v = (torch.randn(2, 3, n, d, generator=_seeded(i)).to(device, dtype) for i in range(3))
        for causal in (True, False):
            reason = impl.supports(q, causal=causal, has_mask=False)
            if reason is not None:
                continue
            got = impl(q, k, v, causal=causal)
            want = ref(q, k, v, causal=causal)
            torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol,
                                       msg=f"{name}: differs from {reference} (n={n}, d={d}, causal={causal})")


def check_fusion(name: str, *, low_dim: int = 8, high_dim: int = 32, **kwargs: Any) -> None:
    fusion = get_spec("fusion", name).create(low_dim=low_dim, high_dim=high_dim, **kwargs)
    low = torch.randn(2, 16, low_dim, generator=_seeded())
    high = torch.randn(2, 16, high_dim, generator=_seeded(1))
    out = fusion(low, high)
    assert out.shape[:2] == (2, 16), f"{name}: output shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite output"


def check_generator(name: str, *, batch: int = 2, **kwargs: Any) -> None:
    """Teacher forcing gives ``[B, N, vocab]`` logits, KV-cached decoding reproduces them, seeded sampling is
    deterministic and in range, and bad conditions are InputErrors."""
    from toklip.gen.sampling import cached_logits

    gen = get_spec("generator", name).create(**kwargs).eval()
    cfg, n = gen.config, gen.num_tokens
    g = _seeded()
    with torch.no_grad():  # perturb every weight: an init with a zero output head would make every logit 0
        for p in gen.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    codes = torch.randint(0, cfg.vocab_size, (batch, n), generator=g)
    if gen.model_type == "c2i":
        cond: Any = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    else:
        cond = torch.randn(batch, cfg.cls_token_num, cfg.caption_dim, generator=g)
    with torch.no_grad():
        logits = gen(codes, cond)
        assert tuple(logits.shape) == (batch, n, cfg.vocab_size), f"{name}: logits shape {tuple(logits.shape)}"
        assert torch.isfinite(logits).all(), f"{name}: non-finite logits"
        cached = cached_logits(gen, codes, cond)
    torch.testing.assert_close(cached, logits, rtol=1e-4, atol=1e-4, msg=f"{name}: KV-cached logits differ")
    first, again = gen.sample(cond, seed=0), gen.sample(cond, seed=0)
    assert first.dtype == torch.long and tuple(first.shape) == (batch, n), f"{name}: sample shape {tuple(first.shape)}"
    assert torch.equal(first, again), f"{name}: seeded sampling is not deterministic"
    assert int(first.min()) >= 0 and int(first.max()) < cfg.vocab_size, f"{name}: sampled codes out of range"
    bad = [-1] * batch if gen.model_type == "c2i" else torch.randn(batch, 1, 1)
    _expect_input_error(lambda: gen(codes, bad), f"{name}: a bad condition")


def _expect_input_error(fn: Any, what: str) -> None:
    try:
        fn()
    except InputError:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{what} raised {type(e).__name__} instead of toklip.InputError: {e}") from e
    raise AssertionError(f"{what} was accepted; it must raise toklip.InputError")


def _compose(**components: Any) -> None:
    import toklip

    model = toklip.build(projector="mlp-test", fusion="concat", **components)
    images = torch.rand(1, 3, model.image_size, model.image_size, generator=_seeded()) * 2 - 1
    with torch.no_grad():
        out = model.tokenize(images)
        assert out.features.shape[:2] == out.indices.shape
        model.decode(out.indices)
