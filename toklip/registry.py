"""Moved to ``toklip.core.registry``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.registry", warn=True)
