"""Moved to ``toklip.core.errors``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.errors", warn=True)
