"""SigLIP2 weights from a transformers checkpoint (`source="hf"`): converted towers must compute what
transformers computes. Tiny random SiglipModel saved with save_pretrained; no network."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip.builtin.siglip2 import SigLIP2Encoder

TEXT = {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 4, "layers": 2, "mlp_ratio": 3.7362,
        "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
        "act_kwargs": {"approximate": "tanh"}}
ENCODER = {"vision": {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 3.7362}, "text": TEXT,
           "embed_dim": 64, "image_size": 64, "patch_size": 8, "tokenizer": "", "source": "hf"}


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel

    cfg = SiglipConfig(
        text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=239, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, projection_size=64,
                         bos_token_id=None, eos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=64, intermediate_size=239, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=8),
    )
    torch.manual_seed(0)
    model = SiglipModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("siglip-hf")
    model.save_pretrained(folder)
    return model, folder


def test_teacher_and_text_match_transformers(hf_model):
    model, folder = hf_model
    enc = SigLIP2Encoder("ViT-SO400M-16-SigLIP2-256", pretrained=str(folder), **ENCODER)
    teacher, text = enc.build_teacher(), enc.build_text_tower().eval()
    images = torch.randn(2, 3, 64, 64)
    ids = torch.randint(2, 1000, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), _features(model.get_image_features(pixel_values=images)),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text(ids), _features(model.get_text_features(input_ids=ids)),
                                   rtol=1e-5, atol=1e-5)
    scale, bias = enc.logit_init()
    assert scale == pytest.approx(model.logit_scale.item()) and bias == pytest.approx(model.logit_bias.item())


def test_build_with_a_transformers_folder(hf_model):
    model, folder = hf_model
    tok = toklip.build(vq="llamagen-test", encoder={"name": "siglip2", "pretrained": str(folder), **ENCODER})
    torch.testing.assert_close(tok.token_encoder.blocks[0].attn.qkv.weight,
                               torch.cat([model.vision_model.encoder.layers[0].self_attn.q_proj.weight,
                                          model.vision_model.encoder.layers[0].self_attn.k_proj.weight,
                                          model.vision_model.encoder.layers[0].self_attn.v_proj.weight]))
    with torch.no_grad():
        assert tok.encode_text(torch.randint(2, 1000, (2, 16))).shape == (2, 64)


def test_hub_repo_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    enc = SigLIP2Encoder("ViT-SO400M-16-SigLIP2-256", pretrained="google/siglip2-test-missing", **ENCODER)
    with pytest.raises(toklip.WeightsNotFoundError, match="google/siglip2-test-missing"):
        enc.build_teacher()


def test_non_siglip_folder(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    enc = SigLIP2Encoder("ViT-SO400M-16-SigLIP2-256", pretrained=str(tmp_path), **ENCODER)
    with pytest.raises(toklip.CheckpointError, match="no SigLIP vision tower"):
        enc.build_teacher()


def test_unknown_source():
    with pytest.raises(toklip.ConfigError, match="source must be"):
        SigLIP2Encoder("ViT-SO400M-16-SigLIP2-256", source="onnx")
