"""Moved to ``toklip.layers.vq``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.layers.vq", warn=True)
