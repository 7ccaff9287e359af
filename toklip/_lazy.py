"""Moved to ``toklip.core.lazy``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.lazy", warn=True)
