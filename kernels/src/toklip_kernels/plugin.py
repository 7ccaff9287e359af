"""toklip plugin (entry point ``toklip: kernels``): registers the Triton components by lazy factory strings.

Nothing heavy is imported here: listing components never imports torch or triton.
"""

from __future__ import annotations

from toklip import hookimpl

_REQUIRES = ("triton>=3.0",)
_PROJECTOR = "toklip_kernels.lookup_mlp.projector:FusedMLPProjector"
_BACKEND = "toklip_kernels.attention.backend:TritonAttentionBackend"


@hookimpl
def register_attn_backends(register):  # type: ignore[no-untyped-def]
    register(
        "triton",
        _BACKEND,
        aliases=("triton-test", "flash-triton"),
        requires=_REQUIRES,
        summary="Triton flash attention, fwd+bwd, causal/bidirectional, any N, head_dim 72 as 64+16 (CUDA; "
        "CPU only under TRITON_INTERPRET=1)",
    )


@hookimpl
def register_projectors(register):  # type: ignore[no-untyped-def]
    register(
        "mlp-fused",
        _PROJECTOR,
        aliases=("mlp-triton", "fused-mlp"),
        requires=_REQUIRES,
        summary="the mlp projector (same fc1/fc2) on fused Triton lookup+MLP kernels; strategy auto|per_token|"
        "codebook|reference, cached codebook table for frozen inference",
    )
    register(
        "mlp-fused-test",
        _PROJECTOR,
        requires=_REQUIRES,
        defaults={"hidden": 64},
        summary="mlp-fused with a small hidden layer, for tests",
    )
