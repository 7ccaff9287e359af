"""Moved to ``toklip.serve.client``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.serve.client", warn=True)
