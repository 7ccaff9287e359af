"""Moved to ``toklip.weights.saved``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.weights.saved", warn=True)
