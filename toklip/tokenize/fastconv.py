"""``--dtype winograd``: the CPU speed mode for CPUs without native bf16.

On an AVX2-only CPU (no AVX512-BF16 / AMX), bf16 convolutions are emulated by oneDNN and run several times slower
than fp32 (benchmarks/results/cpu/bench_tokenize_*), while fp32 direct convolutions already run near the FLOP
roofline, so neither batching nor bf16 helps. What does help is doing fewer multiplications: Winograd F(6x6, 3x3)
convolutions (NNPACK, built into PyTorch's CPU wheels) compute the large stride-1 3x3 convolutions (the
128-channel 256x256 and 128x128 levels of the LlamaGen encoder are ~70 % of its time) about 2x faster, in fp32,
within ~1e-5 of the direct result, so the nearest-code search still sees fp32 latents.

Only convolutions that gain are switched: 3x3, stride 1, padding 1, no dilation or groups, >= 32 input channels,
and feature maps of at least :data:`MIN_SIDE` pixels (NNPACK is slower than oneDNN below that). Everything else,
and any call with gradients, another dtype, device or memory layout, runs the ordinary ``Conv2d`` path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MIN_SIDE = 64
MIN_CHANNELS = 32


class WinogradConv2d(nn.Conv2d):
    """A ``Conv2d`` whose large fp32 CPU inference calls go through NNPACK's Winograd convolution. Same parameters
    and ``state_dict`` as the ``Conv2d`` it replaces (see :func:`use_winograd`)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (input.dim() == 4 and input.shape[-1] >= MIN_SIDE and input.shape[-2] >= MIN_SIDE
                and input.dtype == torch.float32 and weight.dtype == torch.float32 and input.device.type == "cpu"
                and input.is_contiguous() and not torch.is_grad_enabled()):
            padding = list(self.padding)
            # one image per call: NNPACK's single-image path is the fastest at these sizes (1.3-2x per image over
            # its batched one), and an image's result then never depends on the batch it came in
            return torch.cat([torch._nnpack_spatial_convolution(x, weight, bias, padding) for x in input.split(1)])
        return super()._conv_forward(input, weight, bias)


def eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= MIN_CHANNELS)


def nnpack_works() -> bool:
    """Whether NNPACK is built in and initialises on this CPU (``_nnpack_available`` also initialises it, which
    every NNPACK call needs), checked on a small convolution against the direct one."""
    try:
        if not torch._nnpack_available():
            return False
        x = torch.randn(1, MIN_CHANNELS, MIN_SIDE, MIN_SIDE, generator=torch.Generator().manual_seed(0))
        w = torch.randn(8, MIN_CHANNELS, 3, 3, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = torch._nnpack_spatial_convolution(x, w, None, [1, 1])
            want = torch.nn.functional.conv2d(x, w, None, padding=1)
        return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-3))
    except (RuntimeError, AttributeError):
        return False


def use_winograd(module: nn.Module) -> int:
    """Switch every eligible ``Conv2d`` under ``module`` to :class:`WinogradConv2d` in place (the parameters stay
    the same objects); returns how many were switched."""
    count = 0
    for m in module.modules():
        if eligible(m):
            m.__class__ = WinogradConv2d
            count += 1
    return count
