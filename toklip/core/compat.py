"""Old module paths that keep working after a move (the plugin API promise in docs/writing-plugins.md)."""

from __future__ import annotations

import importlib
import sys
import warnings


def moved_module(old: str, new: str, *, warn: bool = True) -> None:
    """Make ``import old`` give the module ``new`` itself (same object, so patches and state are shared)."""
    if warn:
        warnings.warn(f"{old} moved to {new}; import it from there (the old path will be removed in toklip 0.3)",
                      DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
