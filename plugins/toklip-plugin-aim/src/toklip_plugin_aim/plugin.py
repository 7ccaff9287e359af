"""Registers the AIMv2 encoders. Import-light: the factory is a string, resolved only when a model is built."""

from __future__ import annotations

import toklip

_FACTORY = "toklip_plugin_aim.encoder:AIMv2Encoder"
SIZES = ("large", "huge", "1b", "3b")
RESOLUTIONS = (224, 336, 448)


@toklip.hookimpl
def register_encoders(register):  # type: ignore[no-untyped-def]
    for size in SIZES:
        for res in RESOLUTIONS:
            name = f"aimv2-{size}-patch14-{res}"
            register(
                name,
                _FACTORY,
                aliases=(f"aimv2-{size}",) if res == 224 else (),
                requires=("timm>=1.0.28",),
                defaults={"model": f"aimv2_{size}_patch14_{res}"},
                pretrained={"apple_pt": {"hf_hub_id": f"apple/{name}", "file": "model.safetensors",
                                         "license": "apple-amlr"}},
                summary=f"Apple AIMv2-{size} /14 at {res} px (timm blocks, avg pooling; vision only, no text tower)",
            )
    register("aimv2-test", _FACTORY, defaults={"model": "aimv2-test"},
             summary="tiny random AIMv2-architecture encoder for tests")
