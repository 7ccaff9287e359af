"""Lazy module attributes: ``import toklip`` (and its sub-packages) stays cheap until a name is used."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(module_name: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``table[name] = "module:attr"`` (or ``"package.module"`` for a whole
    submodule) on first use and caching the result."""

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        source, _, attr = target.partition(":")
        module = importlib.import_module(source)
        value = getattr(module, attr) if attr else module
        setattr(sys.modules[module_name], name, value)
        return value

    return __getattr__
