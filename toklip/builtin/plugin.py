"""toklip's own components, registered through the same hooks a third-party plugin uses.

Import-light on purpose: every factory is a "module:attr" string resolved only when a component is built.
"""

from __future__ import annotations

from toklip.core.hookspecs import hookimpl

_LLAMAGEN = "toklip.builtin.llamagen:build_llamagen"
_SIGLIP2 = "toklip.builtin.siglip2:SigLIP2Encoder"
_DFN = "toklip.builtin.dfn:DFNEncoder"

# (name, aliases, open_clip model, patch, image size)
SIGLIP2_MODELS = [
    ("siglip2-so400m-16-256", ("siglip2", "siglip2-so400m-16", "siglip2-so400m"), "ViT-SO400M-16-SigLIP2-256"),
    ("siglip2-so400m-16-384", (), "ViT-SO400M-16-SigLIP2-384"),
    ("siglip2-so400m-16-512", (), "ViT-SO400M-16-SigLIP2-512"),
    ("siglip2-b-16-256", ("siglip2-b-16",), "ViT-B-16-SigLIP2-256"),
    ("siglip2-b-16-384", (), "ViT-B-16-SigLIP2-384"),
    ("siglip2-b-16-512", (), "ViT-B-16-SigLIP2-512"),
    ("siglip2-l-16-256", ("siglip2-l-16",), "ViT-L-16-SigLIP2-256"),
    ("siglip2-l-16-384", (), "ViT-L-16-SigLIP2-384"),
    ("siglip2-l-16-512", (), "ViT-L-16-SigLIP2-512"),
]

# (name, aliases, open_clip model, weights tag, HF repo under apple/)
DFN_MODELS = [
    ("dfn-h-14-378", ("dfn", "dfn5b-h-14-378"), "ViT-H-14-378-quickgelu", "dfn5b", "DFN5B-CLIP-ViT-H-14-378"),
    ("dfn-h-14", ("dfn5b-h-14",), "ViT-H-14-quickgelu", "dfn5b", "DFN5B-CLIP-ViT-H-14"),
    ("dfn-l-14", ("dfn2b-l-14",), "ViT-L-14-quickgelu", "dfn2b", "DFN2B-CLIP-ViT-L-14"),
    ("dfn-b-16", ("dfn2b-b-16",), "ViT-B-16-quickgelu", "dfn2b", "DFN2B-CLIP-ViT-B-16"),
]


@hookimpl
def register_vq_tokenizers(register):  # type: ignore[no-untyped-def]
    register(
        "llamagen",
        _LLAMAGEN,
        aliases=("llamagen-vq16", "vq-16", "vq16"),
        defaults={"variant": "VQ-16"},
        pretrained={
            "t2i": {"hf_hub_id": "peizesun/llamagen_t2i", "file": "vq_ds16_t2i.pt", "license": "MIT"},
            "c2i": {"hf_hub_id": "FoundationVision/LlamaGen", "file": "vq_ds16_c2i.pt", "license": "MIT"},
        },
        summary="LlamaGen VQGAN, 16x down, 16384x8 l2-normalised codebook (TokLIP's tokenizer)",
    )
    register(
        "llamagen-vq8",
        _LLAMAGEN,
        aliases=("vq-8", "vq8"),
        defaults={"variant": "VQ-8"},
        pretrained={
            "c2i": {"hf_hub_id": "FoundationVision/LlamaGen", "file": "vq_ds8_c2i.pt", "license": "MIT"},
        },
        summary="LlamaGen VQGAN, 8x down, 16384x8 codebook",
    )
    register(
        "llamagen-test",
        _LLAMAGEN,
        defaults={
            "ch": 32, "ch_mult": [1, 1, 2, 2], "z_channels": 32, "num_res_blocks": 1,
            "codebook_size": 1024, "codebook_embed_dim": 8,
        },
        summary="tiny random LlamaGen VQ (8x down, 1024 codes) for tests",
    )


@hookimpl
def register_encoders(register):  # type: ignore[no-untyped-def]
    for name, aliases, model in SIGLIP2_MODELS:
        register(
            name,
            _SIGLIP2,
            aliases=aliases,
            defaults={"model": model},
            pretrained={
                "webli": {"hf_hub_id": f"timm/{model}", "file": "open_clip_pytorch_model.bin", "license": "Apache-2.0"}
            },
            summary=f"SigLIP2 {model} via open_clip (MAP pooling)",
        )
    register(
        "siglip2-test",
        _SIGLIP2,
        defaults={"model": "siglip2-test"},
        summary="tiny random SigLIP2-architecture encoder with the offline CLIP BPE tokenizer, for tests",
    )
    for name, aliases, model, tag, repo in DFN_MODELS:
        register(
            name,
            _DFN,
            aliases=aliases,
            defaults={"model": model},
            pretrained={tag: {"hf_hub_id": f"apple/{repo}", "file": "open_clip_pytorch_model.bin",
                              "license": "apple-amlr"}},
            summary=f"Apple DFN CLIP {model} via open_clip (class token appended last, last-token pooling)",
        )
    register("dfn-test", _DFN, defaults={"model": "dfn-test"},
             summary="tiny random DFN/CLIP-architecture encoder with the CLIP BPE tokenizer, for tests")


@hookimpl
def register_projectors(register):  # type: ignore[no-untyped-def]
    register("mlp", "toklip.layers.projector:MLPProjector",
             summary="code vector -> Linear(c, 4D) -> exact GELU -> Linear(4D, D) (TokLIP's vq_table/vq_mapping)")
    register("mlp-test", "toklip.layers.projector:MLPProjector", defaults={"hidden": 32},
             summary="the mlp projector with a small hidden layer")
    register("codebook", "toklip.builtin.projectors:CodebookProjector",
             summary="one learned D-dim row per code index (refuses codebooks whose table exceeds max_bytes)")
    register("codebook-test", "toklip.builtin.projectors:CodebookProjector", summary="the codebook projector")
    register("identity", "toklip.builtin.projectors:IdentityProjector",
             summary="code vectors passed through unchanged (needs code_dim == width)")
    register("identity-test", "toklip.builtin.projectors:IdentityProjector", summary="the identity projector")


@hookimpl
def register_attention_modes(register):  # type: ignore[no-untyped-def]
    register("causal", "toklip.builtin.attention:causal", aliases=("causal-test",),
             summary="token i attends to tokens <= i in raster order (TokLIP)")
    register("bidirectional", "toklip.builtin.attention:bidirectional", aliases=("bidir", "bidirectional-test"),
             summary="every token attends to every token")


@hookimpl
def register_attn_backends(register):  # type: ignore[no-untyped-def]
    register("sdpa", "toklip.builtin.attn_backends:SDPABackend", aliases=("sdpa-test",),
             summary="torch scaled_dot_product_attention with is_causal=True (never a materialised mask)")
    register("eager", "toklip.builtin.attn_backends:EagerBackend", aliases=("eager-test",),
             summary="plain PyTorch softmax(QK^T)V in float32: the reference")
    register("flash_attn", "toklip.builtin.attn_backends:FlashAttnBackend", aliases=("flash-attn",),
             requires=("flash-attn>=2.6",), summary="Dao-AILab flash-attn 2 (CUDA, fp16/bf16)")
    register("xformers", "toklip.builtin.attn_backends:XFormersBackend", requires=("xformers>=0.0.28",),
             summary="xformers memory_efficient_attention (CUDA)")


@hookimpl
def register_fusions(register):  # type: ignore[no-untyped-def]
    register("sum", "toklip.builtin.fusions:SumFusion", aliases=("add", "sum-test"),
             summary="low + high (each linearly projected to out_dim when their width differs)")
    register("weighted_sum", "toklip.builtin.fusions:WeightedSumFusion", aliases=("weighted-sum", "weighted_sum-test"),
             summary="(1 - a) * low + a * high with a learnable a = sigmoid(w), w initialised to 0")
    register("concat", "toklip.builtin.fusions:ConcatFusion", aliases=("concat-test",),
             summary="Linear(concat(low, high)) -> out_dim")


@hookimpl
def register_generators(register):  # type: ignore[no-untyped-def]
    from toklip.gen import GENERATORS  # torch-free: names and "module:attr" strings

    for name, (factory, summary) in GENERATORS.items():
        register(name, factory, summary=summary)


@hookimpl
def register_vlm_projectors(register):  # type: ignore[no-untyped-def]
    register("mlp2x_gelu", "toklip.vlm.projectors:mlp_gelu", aliases=("mlp2x_gelu-test",), defaults={"depth": 2},
             summary="LLaVA-1.5's projector: Linear(D, H) -> GELU -> Linear(H, H)")
    register("mlp3x_gelu", "toklip.vlm.projectors:mlp_gelu", aliases=("mlp3x_gelu-test",), defaults={"depth": 3},
             summary="Linear(D, H), then twice GELU -> Linear(H, H)")
    register("linear", "toklip.vlm.projectors:linear", aliases=("linear-test",),
             summary="LLaVA-1's projector: one Linear(D, H)")


@hookimpl
def register_presets(register):  # type: ignore[no-untyped-def]
    register("toklip-s-256", "toklip.presets:toklip-s-256.json", aliases=("toklip-s",),
             pretrained={"official": {"hf_hub_id": "TencentARC/TokLIP", "file": "TokLIP_S_256.pt"}},
             summary="TokLIP-S: LlamaGen VQ-16 + SigLIP2 So400M/16 @256, causal, 256 tokens")
    register("toklip-l-384", "toklip.presets:toklip-l-384.json", aliases=("toklip-l",),
             pretrained={"official": {"hf_hub_id": "TencentARC/TokLIP", "file": "TokLIP_L_384.pt"}},
             summary="TokLIP-L: LlamaGen VQ-16 + SigLIP2 So400M/16 @384, causal, 576 tokens")
    register("toklip-test", "toklip.presets:toklip-test.json",
             summary="tiny random TokLIP for tests and the demo (64 px, 64 tokens, CPU)")


@hookimpl
def register_commands(cli):  # type: ignore[no-untyped-def]
    from toklip.cli.builtin import add_builtin_commands

    add_builtin_commands(cli)
