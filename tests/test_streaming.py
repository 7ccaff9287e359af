"""Streaming causal features (toklip.layers.streaming): KV-cached steps equal the full causal forward row for row,
for every *-test VQ x encoder on this machine (installed plugins included) and every attention backend that runs
on CPU, and each token goes through each block once."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import ClassVar

import pytest
import torch
from torch import nn

import toklip
from toklip.core.errors import ConfigError, InputError
from toklip.core.host import PluginHost, use_host
from toklip.layers.streaming import check_streamable, hidden_state_index

ATOL = 1e-5


@functools.cache
def _installed() -> PluginHost:
    """Builtins plus the plugins installed here (magvit2, cosmos, aimv2, the kernels' triton backend): the
    suite's isolated host holds builtins only, and streaming must work for the plugins' encoders and VQs too."""
    return PluginHost(autoload=True, strict=False)


def _names(kind: str, pattern: str | None = None) -> list:
    with use_host(_installed()):
        names = toklip.list_components(kind, pattern) if pattern else toklip.list_components(kind)
        params = []
        for name in names:
            missing = toklip.get_spec(kind, name).missing_requirements()
            marks = [pytest.mark.skip(reason=f"{name}: {', '.join(missing)}")] if missing else []
            params.append(pytest.param(name, id=name, marks=marks))
    return params


COMBOS = [pytest.param(("preset", "toklip-test"), id="toklip-test")] + [
    pytest.param((v.values[0], e.values[0]), id=f"{v.values[0]}+{e.values[0]}",
                 marks=[*v.marks, *e.marks])
    for v in _names("vq", "*-test") for e in _names("encoder", "*-test")
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Per-token steps are tiny matmuls: on a shared 2-core machine a second thread only spins and contends."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def installed_host(toklip_host: PluginHost) -> Iterator[PluginHost]:
    with use_host(_installed()) as host:
        yield host


@functools.cache
def _model(combo: tuple[str, str]) -> nn.Module:
    torch.manual_seed(0)
    with use_host(_installed()):
        model = toklip.build(combo[1]) if combo[0] == "preset" else toklip.build(vq=combo[0], encoder=combo[1])
    # Large random position embeddings: a token read at the wrong position row must show in the features.
    nn.init.normal_(model.token_encoder.pos_embed, std=0.5)
    return model.eval()


def _indices(model: nn.Module, b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vq.vocab_size, (b, model.grid[0] * model.grid[1]), generator=g)


def _stream_all(stream, idx: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    out, pos = [], 0
    for n in chunks:
        out.append(stream.step(idx[:, pos:pos + n] if n > 1 else idx[:, pos]))
        pos += n
        assert stream.position == pos
    return torch.cat(out, dim=1)


def _chunks(n_tokens: int, pattern: list[int]) -> list[int]:
    sizes, left, i = [], n_tokens, 0
    while left:
        sizes.append(min(pattern[i % len(pattern)], left))
        left -= sizes[-1]
        i += 1
    return sizes


@pytest.mark.parametrize("combo", COMBOS)
def test_stream_equals_full_causal_forward(combo):
    model = _model(combo)
    idx = _indices(model)
    n = idx.shape[1]
    ref = model.tokenize_indices(idx).features
    stream = model.stream(batch_size=2)
    ones = _stream_all(stream, idx, [1] * n)
    torch.testing.assert_close(ones, ref, atol=ATOL, rtol=ATOL)
    stream.reset()
    assert stream.position == 0
    mixed = _stream_all(stream, idx, _chunks(n, [3, 1, 5, 2]))
    torch.testing.assert_close(mixed, ref, atol=ATOL, rtol=ATOL)


def test_prefix_features_do_not_depend_on_later_tokens():
    """Row i of a stream after i+1 steps equals the full forward of any completion of that prefix."""
    model = _model(("llamagen-test", "dfn-test"))
    idx = _indices(model)
    other = idx.clone()
    k = 20
    other[:, k:] = (other[:, k:] + 1) % model.vq.vocab_size
    stream = model.stream(2)
    prefix = stream.step(idx[:, :k])
    torch.testing.assert_close(prefix, model.tokenize_indices(other).features[:, :k], atol=ATOL, rtol=ATOL)
    # ... and the token itself matters: a different x_k gives a different s_k.
    s_k = stream.step(other[:, k])
    ref = model.tokenize_indices(idx).features[:, k:k + 1]
    assert (s_k - ref).abs().max() > 1e-2


def _cpu_backends() -> list:
    params = []
    for p in _names("attn_backend"):
        name = p.values[0]
        marks = list(p.marks)
        if not marks:
            with use_host(_installed()):
                from toklip.layers.attention import backend_instance

                reason = backend_instance(name).supports(torch.zeros(1, 1, 1, 16), causal=True, has_mask=False)
            if reason is not None:
                marks = [pytest.mark.skip(reason=f"{name} does not run on CPU fp32: {reason}")]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("encoder", ["siglip2-test", "dfn-test"])
def test_stream_on_every_cpu_attention_backend(backend, encoder):
    model = _model(("llamagen-test", encoder))
    idx = _indices(model)
    ref = model.tokenize_indices(idx).features
    with toklip.attention_backend(backend):
        stream = model.stream(2)
        for chunks in ([1] * idx.shape[1], _chunks(idx.shape[1], [4, 1, 7])):
            stream.reset()
            torch.testing.assert_close(_stream_all(stream, idx, chunks), ref, atol=ATOL, rtol=ATOL)


class _NoMaskEager:
    """eager attention that, like flash_attn and triton, refuses an explicit mask; it records its calls."""

    name = "nomask-test"
    calls: ClassVar[list[tuple[int, int, bool]]] = []

    def supports(self, q, *, causal, has_mask):
        return "takes no mask" if has_mask else None

    def __call__(self, q, k, v, *, causal, attn_mask=None, scale=None):
        from toklip.builtin.attn_backends import EagerBackend

        assert attn_mask is None
        self.calls.append((q.shape[-2], k.shape[-2], causal))
        return EagerBackend()(q, k, v, causal=causal, scale=scale)


def test_a_backend_without_masks_gets_one_call_per_query_after_a_prefix(toklip_host):
    with use_host(toklip_host):
        toklip.register("attn_backend", "nomask-test", _NoMaskEager)
        model = _model(("llamagen-test", "siglip2-test"))
        idx = _indices(model)
        ref = model.tokenize_indices(idx).features
        _NoMaskEager.calls.clear()
        with toklip.attention_backend("nomask-test"):
            stream = model.stream(2)
            out = torch.cat([stream.step(idx[:, :4]), stream.step(idx[:, 4:7])], dim=1)
    torch.testing.assert_close(out, ref[:, :7], atol=ATOL, rtol=ATOL)
    blocks = len(model.token_encoder.blocks)
    # First chunk: one square causal call per block; second (3 queries after 4 cached): 3 single-query calls.
    assert _NoMaskEager.calls == [(4, 4, True)] * blocks + [(1, 5, False), (1, 6, False), (1, 7, False)] * blocks


def _hidden_states(model, idx) -> list[torch.Tensor]:
    """HF-style hidden states of the full causal forward: block input, then each block's output."""
    enc = model.token_encoder
    captured: list[torch.Tensor] = []
    hooks = [enc.blocks[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))]
    hooks += [b.register_forward_hook(lambda _m, _a, out: captured.append(out)) for b in enc.blocks]
    try:
        model.tokenize_indices(idx)
    finally:
        for h in hooks:
            h.remove()
    return [h[:, : enc.num_tokens] for h in captured]


@pytest.mark.parametrize("layer", [0, 1, 2, -2, -3])
def test_layer_selects_the_hidden_state_and_stops_after_it(layer):
    model = _model(("llamagen-test", "dfn-test"))
    depth = len(model.token_encoder.blocks)
    assert depth == 2
    idx = _indices(model)
    want = _hidden_states(model, idx)[depth + 1 + layer if layer < 0 else layer]
    counts = _count_rows(model)
    try:
        stream = model.stream(2, layer=layer)
        got = _stream_all(stream, idx, _chunks(idx.shape[1], [1, 6]))
    finally:
        counts.remove()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)
    ran = hidden_state_index(layer, depth)
    assert counts.rows == [idx.shape[1]] * ran + [0] * (depth - ran)


def test_default_and_minus_one_are_the_final_features():
    model = _model(("llamagen-test", "siglip2-test"))
    idx = _indices(model)
    ref = model.tokenize_indices(idx).features
    for layer in (None, -1):
        torch.testing.assert_close(model.stream(2, layer=layer).step(idx), ref, atol=ATOL, rtol=ATOL)
    with pytest.raises(ConfigError, match="out of range"):
        model.stream(2, layer=3)
    with pytest.raises(ConfigError, match="out of range"):
        model.stream(2, layer=-4)
    with pytest.raises(ConfigError, match="must be an int"):
        model.stream(2, layer=1.0)


class _RowCounter:
    """Token positions each block's MLP processed (the MLP runs once per row in forward and in a step)."""

    def __init__(self, blocks: nn.Module) -> None:
        self.rows = [0] * len(blocks)
        self.handles = [b.mlp.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i: int):
        def hook(_m, args, _out):
            self.rows[i] += args[0].shape[1]
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _count_rows(model) -> _RowCounter:
    return _RowCounter(model.token_encoder.blocks)


def test_streaming_runs_each_block_on_each_token_once():
    model = _model(("llamagen-test", "siglip2-test"))
    idx = _indices(model)
    n, depth = idx.shape[1], len(model.token_encoder.blocks)
    stream = model.stream(2)
    counts = _count_rows(model)
    try:
        for i in range(n):
            stream.step(idx[:, i])
        streamed = list(counts.rows)
        counts.rows = [0] * depth
        for i in range(1, n + 1):  # re-encoding every prefix
            stream.reset()
            stream.step(idx[:, :i])
        reencoded = list(counts.rows)
    finally:
        counts.remove()
    assert streamed == [n] * depth
    assert reencoded == [n * (n + 1) // 2] * depth


def test_bidirectional_model_is_refused():
    model = toklip.build(vq="llamagen-test", encoder="siglip2-test", attention="bidirectional")
    with pytest.raises(ConfigError, match="causal"):
        model.stream(1)
    model.set_attention("causal")
    assert model.stream(1).position == 0


def test_step_past_max_len_is_an_input_error():
    model = _model(("llamagen-test", "siglip2-test"))
    idx = _indices(model, b=1)
    stream = model.stream(1, max_len=4)
    assert tuple(stream.step(idx[:, :3]).shape) == (1, 3, model.token_encoder.width)
    with pytest.raises(InputError, match="max_len=4"):
        stream.step(idx[:, 3:5])
    assert stream.position == 3  # a refused step consumes nothing
    stream.step(idx[:, 3])
    with pytest.raises(InputError, match="max_len=4"):
        stream.step(idx[:, 4])
    stream.reset()
    torch.testing.assert_close(stream.step(idx[:, :4]), model.tokenize_indices(idx).features[:, :4],
                               atol=ATOL, rtol=ATOL)
    full = model.stream(1)
    assert full.max_len == model.grid[0] * model.grid[1]
    with pytest.raises(InputError, match="max_len"):
        model.stream(1, max_len=full.max_len + 1)


def test_bad_indices_are_input_errors():
    model = _model(("llamagen-test", "siglip2-test"))
    stream = model.stream(2)
    for bad, match in [
        (torch.zeros(2, 1), "integer"),
        (torch.zeros(3, dtype=torch.long), r"\[2\]"),
        (torch.zeros(2, 1, 1, dtype=torch.long), r"\[2\]"),
        (torch.full((2,), model.vq.vocab_size), "must lie in"),
        (torch.full((2, 2), -1), "must lie in"),
        ([0, 1], "integer"),
    ]:
        with pytest.raises(InputError, match=match):
            stream.step(bad)
    assert stream.position == 0


def test_token_encoder_stream_takes_projected_tokens():
    model = _model(("llamagen-test", "dfn-test"))
    enc = model.token_encoder
    tokens = torch.randn(2, enc.num_tokens, enc.width, generator=torch.Generator().manual_seed(3))
    ref = enc.token_features(enc.forward_features(tokens, causal=True))
    stream = enc.stream(2)
    got = torch.cat([stream.step(tokens[:, i:i + 9]) for i in range(0, enc.num_tokens, 9)], dim=1)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=ATOL)
    with pytest.raises(InputError, match=r"\[2, k >= 1, 64\]"):
        stream.step(tokens[:1, :1])


def test_dtype_and_device_follow_the_model():
    model = toklip.build("toklip-test").double().eval()
    idx = _indices(model)
    stream = model.stream(2)
    assert all(k.dtype == torch.float64 and k.device == model.device for k in stream.tokens.cache.keys)
    out = stream.step(idx[:, :5])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model.tokenize_indices(idx).features[:, :5], atol=1e-12, rtol=1e-12)


def test_meta_model_is_refused():
    model = toklip.build(vq="llamagen-test", encoder="siglip2-test", device="meta")
    with pytest.raises(ConfigError, match="meta"):
        model.stream(1)


def test_stream_works_with_autograd_enabled_and_records_no_graph():
    model = _model(("llamagen-test", "siglip2-test"))
    with torch.enable_grad():
        out = model.stream(1).step(_indices(model, b=1)[:, :2])
    assert not out.requires_grad


def test_blocks_without_the_timm_structure_are_refused_by_name():
    class PostNormBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.mlp, self.norm1, self.norm2 = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()

    check_streamable(list(_model(("llamagen-test", "siglip2-test")).token_encoder.blocks))
    with pytest.raises(ConfigError, match=r"block 0 \(PostNormBlock\).*ls1"):
        check_streamable([PostNormBlock()])
    model = toklip.build(vq="llamagen-test", encoder="siglip2-test")
    model.token_encoder.blocks[1] = PostNormBlock()
    with pytest.raises(ConfigError, match="PostNormBlock"):
        model.stream(1)
    model.stream(1, layer=1)  # a stream that stops before the odd block does not need it
