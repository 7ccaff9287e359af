"""Each test gets an isolated toklip plugin host: toklip's builtins plus this plugin, nothing else installed."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network


@pytest.fixture(autouse=True)
def host():
    import {{ cookiecutter.package_name }}.plugin as plugin
    from toklip.plugins import PluginHost, use_host

    h = PluginHost(autoload=False, strict=True)
    h.register_plugin(plugin, name="{{ cookiecutter.component_name }}")
    with use_host(h):
        yield h
