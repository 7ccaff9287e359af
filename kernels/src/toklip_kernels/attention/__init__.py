"""Flash attention (forward + backward) in Triton, with its pure-PyTorch reference.

``flash_attention`` needs Triton (CUDA, or TRITON_INTERPRET=1 on CPU); ``attention_reference`` runs anywhere.
"""

from toklip_kernels.attention.function import flash_attention
from toklip_kernels.attention.reference import attention_reference

__all__ = ["attention_reference", "flash_attention"]
