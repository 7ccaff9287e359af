"""The plugin contract: one pluggy hook per component kind, generated from the kinds table.

A plugin is a module listed under the entry-point group ``toklip`` that implements any of these
hooks with ``@toklip.hookimpl``. Each component hook receives a ``register`` callback::

    register(name, factory, *, aliases=(), requires=(), defaults=None, pretrained=None, summary="")

``factory`` is a ``"package.module:attr"`` string (preferred: nothing is imported until the component is
built, so ``toklip list`` stays fast and a missing optional dependency cannot break discovery) or a callable.
``requires`` lists PEP 508 requirements checked through package metadata before the factory is imported.

Gotcha inherited from pluggy: a hookimpl may accept a subset of a hook's arguments, but arguments that
have default values in the hookimpl are never passed. Write ``def register_vq_tokenizers(register):``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from toklip.core.kinds import KINDS_TABLE

PROJECT = "toklip"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def _component_hook(name: str, doc: str) -> Callable[..., Any]:
    def hook(register):  # type: ignore[no-untyped-def]
        ...

    hook.__name__ = hook.__qualname__ = name
    hook.__doc__ = doc
    return hookspec(hook)


for _kind in KINDS_TABLE:
    globals()[_kind.hook] = _component_hook(_kind.hook, _kind.doc)
del _kind


@hookspec
def register_commands(cli):  # type: ignore[no-untyped-def]
    """Add subcommands to the ``toklip`` command line: ``cli`` is the root :mod:`click` group."""
