"""Moved to ``toklip.core.host``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.host", warn=True)
