"""toklip hook implementations for the Cosmos DI tokenizers. Import-light: factories are "module:attr" strings."""

from __future__ import annotations

from toklip import hookimpl

FACTORY = "toklip_plugin_cosmos.model:build_cosmos"
LICENSE = "NVIDIA Open Model License"


def _weights(tag: str, repo: str) -> dict[str, dict[str, str]]:
    # autoencoder.jit holds the encoder, decoder and both 1x1 convs in one file (weights read, never run)
    return {tag: {"hf_hub_id": repo, "file": "autoencoder.jit", "license": LICENSE}}


@hookimpl
def register_vq_tokenizers(register):  # type: ignore[no-untyped-def]
    register(
        "cosmos-di16x16",
        FACTORY,
        aliases=("cosmos", "cosmos-0.1-di16x16"),
        defaults={"variant": "di16x16"},
        pretrained=_weights("cosmos-0.1", "nvidia/Cosmos-0.1-Tokenizer-DI16x16"),
        summary="NVIDIA Cosmos-0.1 DI16x16: Haar patch 4, 16x down, FSQ [8,8,8,5,5,5] = 64000 codes of 6 dims",
    )
    register(
        "cosmos-di8x8",
        FACTORY,
        aliases=("cosmos-0.1-di8x8",),
        defaults={"variant": "di8x8"},
        pretrained=_weights("cosmos-0.1", "nvidia/Cosmos-0.1-Tokenizer-DI8x8"),
        summary="NVIDIA Cosmos-0.1 DI8x8: Haar patch 4, 8x down, FSQ 64000 codes",
    )
    register(
        "cosmos-di16x16-360p",
        FACTORY,
        aliases=("cosmos-tokenize1-di16x16-360p",),
        defaults={"variant": "di16x16-360p"},
        pretrained=_weights("tokenize1", "nvidia/Cosmos-Tokenize1-DI16x16-360p"),
        summary="NVIDIA Cosmos-Tokenize1 DI16x16-360p: Haar patch 2, 16x down, FSQ 64000 codes",
    )
    register(
        "cosmos-di8x8-360p",
        FACTORY,
        aliases=("cosmos-tokenize1-di8x8-360p",),
        defaults={"variant": "di8x8-360p"},
        pretrained=_weights("tokenize1", "nvidia/Cosmos-Tokenize1-DI8x8-360p"),
        summary="NVIDIA Cosmos-Tokenize1 DI8x8-360p: Haar patch 2, 8x down, FSQ 64000 codes",
    )
    register(
        "cosmos-test",
        FACTORY,
        defaults={"variant": "test"},
        summary="tiny random Cosmos DI (8x down, FSQ 64000 codes, one attention level) for tests",
    )
