"""Public building blocks for components and plugins: the VQ tokenizer base class with its input checks.

Plugins import from here (and from :mod:`toklip.weights`, :mod:`toklip.testing`, :mod:`toklip.core.protocols`),
never from ``toklip.builtin``.
"""

from toklip.layers.vq import RANGE_SLACK, VQTokenizerBase, check_images, check_indices

__all__ = ["RANGE_SLACK", "VQTokenizerBase", "check_images", "check_indices"]
