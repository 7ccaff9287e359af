"""Moved to ``toklip.core.hookspecs``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.hookspecs", warn=True)
