"""toklip hook implementations. Keep this module import-light: import toklip only, never torch or your model
code; factories are "module:attr" strings that toklip imports when a component is built."""

from __future__ import annotations

from toklip import hookimpl

FACTORY = "{{ cookiecutter.package_name }}.model:build"


@hookimpl
def register_vq_tokenizers(register):  # no default values on hook arguments: pluggy would not pass them
    register(
        "{{ cookiecutter.component_name }}",
        FACTORY,
        defaults={"downsample": 16, "code_dim": 8, "vocab_size": 16384, "hidden": 256},
        # Published weights, fetched from the Hugging Face hub by toklip.build(..., pretrained=True):
        # pretrained={"v1": {"hf_hub_id": "you/{{ cookiecutter.component_name }}", "file": "model.safetensors"}},
        summary="{{ cookiecutter.description }}",
    )
    register(
        "{{ cookiecutter.component_name }}-test",
        FACTORY,
        defaults={"downsample": 4, "code_dim": 8, "vocab_size": 256, "hidden": 32},
        summary="tiny random {{ cookiecutter.component_name }} for tests",
    )
