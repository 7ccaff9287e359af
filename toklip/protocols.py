"""Moved to ``toklip.core.protocols``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.protocols", warn=True)
