"""toklip hook implementations. Keep this module import-light: import toklip only, never torch or your model
code; factories are "module:attr" strings that toklip imports when a component is built."""

from __future__ import annotations

from toklip import hookimpl
{% if cookiecutter.component_kind == "vq" %}
FACTORY = "{{ cookiecutter.package_name }}.model:build"


@hookimpl
def register_vq_tokenizers(register):  # no default values on hook arguments: pluggy would not pass them
    register(
        "{{ cookiecutter.component_name }}",
        FACTORY,
        defaults={"downsample": 16, "code_dim": 8, "vocab_size": 16384, "hidden": 256},
        # Published weights; toklip.build(..., pretrained=True) downloads them and passes the local file:
        # pretrained={"v1": {"hf_hub_id": "you/{{ cookiecutter.component_name }}", "file": "model.safetensors"}},
        summary="{{ cookiecutter.description }}",
    )
    register(
        "{{ cookiecutter.component_name }}-test",
        FACTORY,
        defaults={"downsample": 4, "code_dim": 8, "vocab_size": 256, "hidden": 32},
        summary="tiny random {{ cookiecutter.component_name }} for tests",
    )
{%- elif cookiecutter.component_kind == "encoder" %}
FACTORY = "{{ cookiecutter.package_name }}.model:Encoder"


@hookimpl
def register_encoders(register):  # no default values on hook arguments: pluggy would not pass them
    register(
        "{{ cookiecutter.component_name }}",
        FACTORY,
        defaults={"timm_model": "vit_base_patch16_224", "image_size": 224, "patch_size": 16,
                  "vision": {"embed_dim": 768, "depth": 12, "num_heads": 12}},
        # pretrained={"v1": {"hf_hub_id": "you/{{ cookiecutter.component_name }}", "file": "model.safetensors"}},
        summary="{{ cookiecutter.description }}",
    )
    register(
        "{{ cookiecutter.component_name }}-test",
        FACTORY,
        defaults={"timm_model": "vit_base_patch16_224", "image_size": 64, "patch_size": 8,
                  "vision": {"embed_dim": 64, "depth": 2, "num_heads": 4}},
        summary="tiny random {{ cookiecutter.component_name }} for tests",
    )
{%- elif cookiecutter.component_kind == "fusion" %}
FACTORY = "{{ cookiecutter.package_name }}.model:GatedFusion"


@hookimpl
def register_fusions(register):  # no default values on hook arguments: pluggy would not pass them
    register("{{ cookiecutter.component_name }}", FACTORY, summary="{{ cookiecutter.description }}")
    register("{{ cookiecutter.component_name }}-test", FACTORY,
             summary="the {{ cookiecutter.component_name }} fusion, for the contract tests")
{%- elif cookiecutter.component_kind == "preset" %}

@hookimpl
def register_presets(register):  # no default values on hook arguments: pluggy would not pass them
    # "package:file.json" names a file inside this installed package (pyproject.toml lists it as package-data).
    register("{{ cookiecutter.component_name }}",
             "{{ cookiecutter.package_name }}:{{ cookiecutter.component_name }}.json",
             summary="{{ cookiecutter.description }}")
    register("{{ cookiecutter.component_name }}-test",
             "{{ cookiecutter.package_name }}:{{ cookiecutter.component_name }}-test.json",
             summary="the {{ cookiecutter.component_name }} layout with tiny random components, for tests")
{%- endif %}
