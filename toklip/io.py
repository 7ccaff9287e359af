"""Moved to ``toklip.core.io``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.io", warn=True)
