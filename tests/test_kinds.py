"""Issue 14: the kinds table is the one source, and what it names exists; attention caches follow the host."""

from __future__ import annotations

import gc
import importlib

import pytest

import toklip
from toklip.core.kinds import KINDS, KINDS_TABLE


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("kind", KINDS_TABLE, ids=[k.name for k in KINDS_TABLE])
def test_every_kind_names_a_real_protocol_check_and_hook(kind):
    from toklip.core import hookspecs

    if kind.protocol:
        assert isinstance(_resolve(kind.protocol), type)
    if kind.check:
        assert callable(_resolve(kind.check))
    assert callable(getattr(hookspecs, kind.hook)) and getattr(hookspecs, kind.hook).__doc__ == kind.doc


def test_registries_and_listing_follow_the_table():
    assert set(toklip.list_components()) == set(KINDS)


def test_builtin_components_follow_their_protocols():
    from toklip.core import protocols

    model = toklip.build("toklip-test")
    assert isinstance(model.projector, protocols.Projector)
    assert isinstance(model.fusion, protocols.Fusion)
    assert isinstance(model.token_encoder, protocols.TokenEncoder)
    assert isinstance(model.vq, protocols.VQTokenizer)
    enc = toklip.get_spec("encoder", "siglip2-test").create()
    assert isinstance(enc, protocols.SemanticEncoder)


def test_attention_backend_cache_belongs_to_its_host():
    """Backends are cached per host object (weakly): a new host never gets a dropped host's entries, even if
    it reuses the dropped host's id()."""
    from toklip.core.host import PluginHost, use_host
    from toklip.model import attention

    with use_host(PluginHost(autoload=False)) as first:
        attention.backend_instance("eager")
        assert "eager" in attention._instances[first]
    del first
    gc.collect()
    with use_host(PluginHost(autoload=False)) as second:
        assert second not in attention._instances
        assert attention.backend_instance("eager") is attention._instances[second]["eager"]
