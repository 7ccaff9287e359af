"""Moved to ``toklip.core.known_plugins``."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.core.known_plugins", warn=True)
