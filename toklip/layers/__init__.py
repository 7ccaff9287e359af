"""Public building blocks for components and plugins.

- ``VQTokenizerBase`` with its input checks (``check_images``, ``check_indices``): subclass it for a VQ.
- LlamaGen-style conv blocks (``ResnetBlock``, ``AttnBlock``, ``Downsample``, ``Upsample``, ``group_norm``,
  ``swish``): official LlamaGen parameter names, so a VQ built from them loads LlamaGen-layout checkpoints.
- The timm ViT adapter (``timm_vit``, ``token_encoder_from_timm``): a timm ViT whose attention runs on toklip's
  backends, taken into the ``TokenEncoder`` every semantic encoder returns; ``BackendAttention`` is its
  attention layer.
- ``MLPProjector``: TokLIP's code-vector -> token-embedding MLP; accelerated projectors subclass it.

Plugins import from here (and from :mod:`toklip.weights`, :mod:`toklip.testing`, :mod:`toklip.core.protocols`),
never from ``toklip.builtin``. Heavy members load on first use.
"""

from typing import TYPE_CHECKING

from toklip.core.lazy import lazy_getattr
from toklip.layers.vq import RANGE_SLACK, VQTokenizerBase, check_images, check_indices

_LAZY = {
    **{name: f"toklip.layers.conv:{name}"
       for name in ("AttnBlock", "Downsample", "ResnetBlock", "Upsample", "group_norm", "swish")},
    "BackendAttention": "toklip.layers.attention:BackendAttention",
    "MLPProjector": "toklip.layers.projector:MLPProjector",
    "TokenEncoder": "toklip.layers.token_encoder:TokenEncoder",
    "timm_vit": "toklip.layers.vit_adapter:timm_vit",
    "token_encoder_from_timm": "toklip.layers.vit_adapter:token_encoder_from_timm",
}
__getattr__ = lazy_getattr(__name__, _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from toklip.layers.attention import BackendAttention
    from toklip.layers.projector import MLPProjector
    from toklip.layers.conv import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm, swish
    from toklip.layers.vit_adapter import timm_vit, token_encoder_from_timm
    from toklip.layers.token_encoder import TokenEncoder

__all__ = ["RANGE_SLACK", "VQTokenizerBase", "check_images", "check_indices", *_LAZY]
