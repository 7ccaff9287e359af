"""Every test runs against an isolated toklip plugin host holding the builtins plus this plugin only."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["toklip.testing"]  # fixtures and the gpu-marker skip

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network


@pytest.fixture(autouse=True)
def host():
    import toklip_plugin_aim.plugin as plugin
    from toklip.testing import plugin_host

    with plugin_host(plugin, name="aim") as h:
        yield h


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
