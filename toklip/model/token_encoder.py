"""Moved to :mod:`toklip.layers.token_encoder` (a building block plugins may import)."""

from toklip.core.compat import moved_module

moved_module(__name__, "toklip.layers.token_encoder", warn=True)
