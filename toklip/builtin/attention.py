"""The two attention modes TokLIP uses: causal (the paper's default) and bidirectional."""

from toklip.core.protocols import AttentionMode


def causal() -> AttentionMode:
    return AttentionMode("causal", causal=True, summary="token i attends to tokens <= i (raster order)")


def bidirectional() -> AttentionMode:
    return AttentionMode("bidirectional", causal=False, summary="every token attends to every token")
