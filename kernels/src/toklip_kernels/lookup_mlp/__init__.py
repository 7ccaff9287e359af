"""VQ lookup + MLP: ``indices -> MLP(code_table[indices])`` with per-token fused and codebook-space kernels."""

from toklip_kernels.lookup_mlp.function import STRATEGIES, choose_strategy, codebook_table, gather_table, lookup_mlp
from toklip_kernels.lookup_mlp.reference import codebook_mlp_reference, lookup_mlp_reference

__all__ = [
    "STRATEGIES",
    "choose_strategy",
    "codebook_mlp_reference",
    "codebook_table",
    "gather_table",
    "lookup_mlp",
    "lookup_mlp_reference",
]
