"""Parity with the official TokLIP implementation on the tiny random-weight fixture (fp32, CPU).

Tolerances from the fixture README: indices and preprocessing exact; forward tensors max|d|/max|ref| <= 1e-5
(vq_decoded 5e-5).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import toklip
from toklip.data.preprocess import preprocess

FIX = "official-toklip"


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope="module")
def vectors(request):
    from tests.conftest import FIXTURES

    return load_file(str(FIXTURES / FIX / "vectors.safetensors"))


@pytest.fixture(scope="module")
def fixture_paths():
    from tests.conftest import FIXTURES

    d = FIXTURES / FIX
    return {"pt": d / "official_state.pt", "st": d / "official_state.safetensors", "config": d / "config.json",
            "vq": d / "llamagen_vq.pt", "dir": d}


def _load(fixture_paths, which="pt"):
    torch.set_num_threads(1)
    return toklip.load_official(fixture_paths[which], config=fixture_paths["config"])


class Capture:
    def __init__(self, model):
        self.out = {}
        hooks = {
            "vq_latent_prenorm": model.vq.quant_conv,
            "mlp_hidden_pre_act": model.projector.fc1,
            "block0_out": model.token_encoder.blocks[0],
            "block1_out": model.token_encoder.blocks[1],
            "text_block0_out": model.text.transformer.resblocks[0],
            "text_ln_final_out": model.text.ln_final,
        }
        for name, module in hooks.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def fn(module, inputs, output):
            self.out[name] = output.detach().clone()

        return fn


@pytest.mark.parametrize("which", ["pt", "st"])
def test_image_path_matches_every_stage(fixture_paths, vectors, which):
    model = _load(fixture_paths, which)
    cap = Capture(model)
    with torch.no_grad():
        out = model.tokenize(vectors["image"])
    assert torch.equal(out.indices, vectors["vq_indices"])
    assert out.indices.dtype == torch.int64
    got = {
        "vq_latent_prenorm": cap.out["vq_latent_prenorm"],
        "vq_codes": out.codes,
        "mlp_hidden_pre_act": cap.out["mlp_hidden_pre_act"],
        "mlp_out": out.tokens,
        "tokens_after_pos": out.tokens + model.token_encoder.pos_embed,
        "block0_out": cap.out["block0_out"],
        "block1_out": cap.out["block1_out"],
        "trunk_features": out.features,
        "pooled": out.pooled,
    }
    for name, tensor in got.items():
        assert tensor.shape == vectors[name].shape, name
        assert rel(tensor, vectors[name]) <= 1e-5, f"{name}: {rel(tensor, vectors[name]):.2e}"
    with torch.no_grad():
        quant = out.codes.reshape(2, 8, 8, 8).permute(0, 3, 1, 2)
        assert rel(quant, vectors["vq_quant_bchw"]) <= 1e-5
        assert rel(model.decode(out.indices), vectors["vq_decoded"]) <= 5e-5


def test_text_path_and_logits(fixture_paths, vectors):
    model = _load(fixture_paths)
    cap = Capture(model)
    with torch.no_grad():
        text_embed = model.encode_text(vectors["text_ids"])
        fwd = model(vectors["image"], vectors["text_ids"])
        logits_i, logits_t = model.get_logits(vectors["image"], vectors["text_ids"])
    assert rel(cap.out["text_block0_out"], vectors["text_block0_out"]) <= 1e-5
    assert rel(cap.out["text_ln_final_out"], vectors["text_ln_final_out"]) <= 1e-5
    assert rel(text_embed, vectors["text_embed"]) <= 1e-5
    assert rel(fwd["image_features"], vectors["image_features"]) <= 1e-5
    assert rel(fwd["text_features"], vectors["text_features"]) <= 1e-5
    assert rel(fwd["logit_scale"], vectors["logit_scale_exp"]) <= 1e-6
    assert torch.equal(fwd["logit_bias"].detach(), vectors["logit_bias"])
    assert rel(logits_i, vectors["logits_per_image"]) <= 1e-5
    assert rel(logits_t, vectors["logits_per_text"]) <= 1e-5


def test_bidirectional_mode(fixture_paths, vectors):
    model = _load(fixture_paths).set_attention("bidirectional")
    cap = Capture(model)
    with torch.no_grad():
        out = model.tokenize(vectors["image"])
        logits_i, _ = model.get_logits(vectors["image"], vectors["text_ids"])
    assert rel(cap.out["block0_out"], vectors["block0_out_bidir"]) <= 1e-5
    assert rel(cap.out["block1_out"], vectors["block1_out_bidir"]) <= 1e-5
    assert rel(out.features, vectors["trunk_features_bidir"]) <= 1e-5
    assert rel(out.pooled, vectors["pooled_bidir"]) <= 1e-5
    assert rel(logits_i, vectors["logits_per_image_bidir"]) <= 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_backends_agree_with_fixture(fixture_paths, vectors, backend):
    model = _load(fixture_paths).set_attn_backend(backend)
    with torch.no_grad():
        out = model.tokenize(vectors["image"])
    assert rel(out.features, vectors["trunk_features"]) <= 1e-5


def test_preprocessing_is_exact(vectors):
    image = Image.fromarray(vectors["preproc_input_uint8"].numpy())
    assert torch.equal(preprocess(image, 64), vectors["preproc_output"])


def test_llamagen_release_file_loads_standalone(fixture_paths, vectors):
    from toklip.builtin.llamagen import build_llamagen

    vq = build_llamagen(ch=32, ch_mult=[1, 1, 2, 2], z_channels=32, codebook_size=1024, codebook_embed_dim=8,
                        num_res_blocks=2, pretrained=str(fixture_paths["vq"]))
    with torch.no_grad():
        enc = vq.encode(vectors["image"])
        assert torch.equal(enc.indices.reshape(2, -1), vectors["vq_indices"])
        assert rel(enc.latent, vectors["vq_latent_prenorm"]) <= 1e-5
        assert rel(vq.decode(enc.indices), vectors["vq_decoded"]) <= 5e-5


def test_official_key_names_map_one_to_one(fixture_paths):
    from toklip.weights.official import official_to_toklip_key, toklip_to_official_key

    official = load_file(str(fixture_paths["st"]))
    model = _load(fixture_paths)
    ours = model.state_dict()
    mapped = {official_to_toklip_key(k) for k in official}
    assert mapped == {k for k in ours if not k.startswith("fusion.")}
    assert all(toklip_to_official_key(official_to_toklip_key(k)) == k for k in official)


def _key_file(path):
    rows = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, _dtype = line.split("\t")
        rows[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return rows


@pytest.mark.parametrize("preset,keys", [("toklip-s-256", "keys_toklip_s_256.txt"),
                                         ("toklip-l-384", "keys_toklip_l_384.txt")])
def test_full_size_presets_have_the_official_keys_and_shapes(fixture_paths, preset, keys):
    """Built on the meta device: no memory, no init, exact names and shapes."""
    from toklip.weights.official import toklip_to_official_key

    expected = _key_file(fixture_paths["dir"] / keys)
    model = toklip.build(preset, device="meta")
    ours = {toklip_to_official_key(k): tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("fusion.")}
    assert ours == expected


def test_card_example_builds_toklip_s_architecture(fixture_paths):
    from toklip.weights.official import toklip_to_official_key

    expected = _key_file(fixture_paths["dir"] / "keys_toklip_s_256.txt")
    model = toklip.build(vq="llamagen", encoder="siglip2", device="meta")
    assert model.image_size == 256 and model.grid == (16, 16)
    ours = {toklip_to_official_key(k): tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("fusion.")}
    assert ours == expected


def test_meta_device_loading_equals_a_normal_build(fixture_paths):
    """load_official builds on the meta device and adopts the checkpoint tensors; the result must equal a
    randomly-initialised build loaded the ordinary way, and nothing may stay on the meta device."""
    from toklip.model.factory import build_from_config, resolve_config
    from toklip.model.loading import _optional_keys
    from toklip.weights import load_state_dict_strict, read_checkpoint, unwrap_state_dict
    from toklip.weights.official import official_state_to_toklip

    fast = toklip.load_official(fixture_paths["pt"], config=fixture_paths["config"])
    cfg = resolve_config(fixture_paths["config"])
    slow = build_from_config(cfg)
    state = official_state_to_toklip(unwrap_state_dict(read_checkpoint(fixture_paths["pt"])))
    load_state_dict_strict(slow, state, source="x", allow_missing=_optional_keys(slow))
    assert not any(t.is_meta for t in [*fast.parameters(), *fast.buffers()])
    sf, ss = fast.state_dict(), slow.state_dict()
    assert all(torch.equal(sf[k], ss[k]) for k in state)
    assert {n for n, p in fast.named_parameters() if p.requires_grad} == \
           {n for n, p in slow.named_parameters() if p.requires_grad}
    assert fast.fusion.proj.weight.abs().sum() > 0  # toklip-only layers get a real init
