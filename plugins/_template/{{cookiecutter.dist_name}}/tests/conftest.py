"""Each test gets an isolated toklip plugin host: toklip's builtins plus this plugin, nothing else installed."""

import os

import pytest

pytest_plugins = ["toklip.testing"]  # fixtures (toklip_host, no_tf32) and the gpu-marker skip

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network


@pytest.fixture(autouse=True)
def host():
    import {{ cookiecutter.package_name }}.plugin as plugin
    from toklip.testing import plugin_host

    with plugin_host(plugin, name="{{ cookiecutter.component_name }}") as h:
        yield h
