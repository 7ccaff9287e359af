"""toklip-kernels: Triton kernels for toklip, registered as the ``triton`` attention backend and the
``mlp-fused`` projector.

Importing this package is cheap (no torch, no triton); the kernels load on first use::

    from toklip_kernels.attention import flash_attention
    from toklip_kernels.lookup_mlp import lookup_mlp
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
