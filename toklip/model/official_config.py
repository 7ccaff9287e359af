"""Read the official-architecture ``config.json`` format (shared/fixtures/official-toklip) into a TokLIPConfig.

That format describes any TokLIP built by the official code (LlamaGen VQ -> MLP -> timm ViT with MAP pool ->
open_clip text tower) with explicit sizes, which is how tiny parity models are described.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toklip.model.config import ComponentRef, TokLIPConfig
from toklip.core.errors import ConfigError

REQUIRED = ("image_size", "vq", "token_encoder", "mlp_projector", "open_clip_model_config")


def is_official_config(data: Mapping[str, Any]) -> bool:
    return "token_encoder" in data and "mlp_projector" in data


def _need(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ConfigError(f"official config: {where}.{key} is missing")
    return section[key]


def toklip_config_from_official(data: Mapping[str, Any]) -> TokLIPConfig:
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"official config is missing {missing}")
    vq, te = data["vq"], data["token_encoder"]
    oc = data["open_clip_model_config"]
    clip = data.get("clip", {})

    enc_mult = list(vq.get("encoder_ch_mult") or _need(vq, "ch_mult", "vq"))
    dec_mult = list(vq.get("decoder_ch_mult") or enc_mult)
    if dec_mult != enc_mult:
        raise ConfigError(f"official config: encoder_ch_mult {enc_mult} != decoder_ch_mult {dec_mult} is not supported")
    n_res = int(vq.get("num_res_blocks_encoder", vq.get("num_res_blocks", 2)))
    if int(vq.get("num_res_blocks_decoder", n_res + 1)) != n_res + 1:
        raise ConfigError("official config: LlamaGen decoders use num_res_blocks + 1 blocks per level")
    if not vq.get("codebook_l2_norm", True):
        raise ConfigError("official config: only the l2-normalised LlamaGen quantizer is supported")
    downsample = 2 ** (len(enc_mult) - 1)

    if te.get("class_token"):
        raise ConfigError("official config: token encoders with a class token are not this format (SigLIP-style only)")
    if te.get("pooling", "map") != "map":
        raise ConfigError(f"official config: pooling {te.get('pooling')!r} is not supported (map only)")
    act = te.get("act", "gelu_tanh")
    if not str(act).startswith("gelu_tanh"):
        raise ConfigError(f"official config: token encoder activation {act!r} is not supported (gelu_tanh only)")
    patch = int(te.get("patch_size", downsample))
    if patch != downsample:
        raise ConfigError(f"official config: patch_size {patch} must equal the VQ downsample factor {downsample}")

    image_size = int(data["image_size"])
    text_cfg = dict(oc.get("text_cfg") or {})
    embed_dim = int(oc.get("embed_dim", clip.get("embed_dim", te["width"])))
    encoder = {
        "name": "siglip2-so400m-16-256",
        "image_size": image_size,
        "patch_size": patch,
        "vision": {
            "embed_dim": int(_need(te, "width", "token_encoder")),
            "depth": int(_need(te, "depth", "token_encoder")),
            "num_heads": int(_need(te, "heads", "token_encoder")),
            "mlp_ratio": float(te.get("mlp_ratio", 3.7362)),
        },
        "text": text_cfg,
        "embed_dim": embed_dim,
        "tokenizer": text_cfg.get("hf_tokenizer_name", ""),
        "init_logit_bias": oc.get("init_logit_bias", clip.get("init_logit_bias")),
    }
    if "init_logit_scale" in clip:
        encoder["init_logit_scale"] = clip["init_logit_scale"]
    return TokLIPConfig(
        name=data.get("name"),
        image_size=image_size,
        resize_mode=data.get("preprocess", {}).get("resize_mode", "shortest"),
        vq=ComponentRef(
            "llamagen",
            {
                "ch": int(vq.get("ch", 128)),
                "ch_mult": enc_mult,
                "num_res_blocks": n_res,
                "z_channels": int(vq.get("z_channels", 256)),
                "codebook_size": int(vq.get("codebook_size", 16384)),
                "codebook_embed_dim": int(vq.get("codebook_embed_dim", 8)),
            },
        ),
        encoder=ComponentRef.parse(encoder, "encoder"),
        projector=ComponentRef("mlp", {"hidden": int(data["mlp_projector"].get("hidden", 4 * te["width"]))}),
        attention="causal" if te.get("causal", True) else "bidirectional",
        fusion=ComponentRef("concat"),
    )
