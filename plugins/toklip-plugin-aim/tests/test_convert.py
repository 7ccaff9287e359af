"""Native transformers AIMv2 checkpoints load into timm blocks and compute what transformers computes."""

from __future__ import annotations

import pytest
import torch

import toklip
from toklip_plugin_aim.encoder import AIMv2Encoder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    cfg = Aimv2VisionConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                            image_size=56, patch_size=7, use_head=False)
    torch.manual_seed(0)
    model = Aimv2VisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("aimv2")
    model.save_pretrained(folder)
    return model, folder


def test_teacher_equals_transformers_mean_pooled_tokens(hf_model_and_file):
    model, path = hf_model_and_file
    teacher = AIMv2Encoder("aimv2-test", pretrained=str(path)).build_teacher()
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = model(pixel_values=images).last_hidden_state.mean(dim=1)
        torch.testing.assert_close(teacher(images), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def hf_model_and_file(hf_folder):
    model, folder = hf_folder
    return model, folder / "model.safetensors"


def test_timm_layout_files_load_too(tmp_path, hf_model_and_file):
    from safetensors.torch import save_file

    _, path = hf_model_and_file
    teacher = AIMv2Encoder("aimv2-test", pretrained=str(path)).build_teacher()
    timm_file = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(timm_file))
    again = AIMv2Encoder("aimv2-test", pretrained=str(timm_file)).build_teacher()
    images = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(again(images), teacher(images), rtol=0, atol=0)


def test_build_with_the_checkpoint_keeps_the_patch_norm(hf_model_and_file):
    model, path = hf_model_and_file
    tok = toklip.build(vq="llamagen-test", encoder={"name": "aimv2-test", "pretrained": str(path)})
    torch.testing.assert_close(tok.token_encoder.embed_norm.weight, model.embeddings.rms_norm.weight)
    torch.testing.assert_close(tok.token_encoder.norm.weight, model.rms_norm.weight)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"something.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(toklip.CheckpointError, match="not an AIMv2 checkpoint"):
        AIMv2Encoder("aimv2-test", pretrained=str(bad)).build_teacher()
