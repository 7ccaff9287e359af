"""toklip hook implementations for Open-MAGVIT2. Import-light: factories are "module:attr" strings."""

from __future__ import annotations

from toklip import hookimpl

FACTORY = "toklip_plugin_magvit2.model:build_magvit2"
LICENSE = "Apache-2.0"
HUB = "TencentARC/Open-MAGVIT2-Tokenizer-"


def _weights(tag: str, repo_suffix: str, file: str) -> dict[str, dict[str, str]]:
    return {tag: {"hf_hub_id": HUB + repo_suffix, "file": file, "license": LICENSE}}


@hookimpl
def register_vq_tokenizers(register):  # type: ignore[no-untyped-def]
    register(
        "magvit2",
        FACTORY,
        aliases=("open-magvit2", "magvit2-256", "open-magvit2-256"),
        defaults={"variant": "imagenet-256"},
        pretrained=_weights("imagenet", "256-resolution", "imagenet_256_L.ckpt"),
        summary="Open-MAGVIT2 LFQ, ImageNet 256px, 16x down, 2^18 codes of 18 +-1 bits (EMA weights)",
    )
    register(
        "magvit2-128",
        FACTORY,
        aliases=("open-magvit2-128",),
        defaults={"variant": "imagenet-128"},
        pretrained=_weights("imagenet", "128-resolution", "imagenet_128_L.ckpt"),
        summary="Open-MAGVIT2 LFQ, ImageNet 128px, 8x down, 2^18 codes of 18 bits",
    )
    register(
        "magvit2-pretrain-16384",
        FACTORY,
        aliases=("open-magvit2-pretrain-16384",),
        defaults={"variant": "pretrain-16384"},
        pretrained=_weights("pretrain", "16384-Pretrain", "pretrain256_16384.ckpt"),
        summary="Open-MAGVIT2 LFQ text-to-image pretrain, 16x down, 2^14 codes of 14 bits",
    )
    register(
        "magvit2-pretrain-262144",
        FACTORY,
        aliases=("open-magvit2-pretrain-262144",),
        defaults={"variant": "pretrain-262144"},
        pretrained=_weights("pretrain", "262144-Pretrain", "pretrain256_262144.ckpt"),
        summary="Open-MAGVIT2 LFQ text-to-image pretrain, 16x down, 2^18 codes of 18 bits",
    )
    register(
        "magvit2-test",
        FACTORY,
        defaults={"variant": "test"},
        summary="tiny random Open-MAGVIT2 (4x down, 2^10 codes) for tests",
    )
