"""Where the Triton kernels can run: a CUDA device, or the CPU under ``TRITON_INTERPRET=1``.

Triton decides at ``@triton.jit`` time whether a kernel is compiled or interpreted, so the answer is read
from the kernel objects themselves (imported lazily) rather than from the environment at call time.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import torch

# Interpreter: bf16 ``tl.dot`` is silently wrong (triton #11584), so only these dtypes are trusted there.
INTERPRETER_DTYPES = (torch.float32, torch.float16)
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@lru_cache(maxsize=1)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@lru_cache(maxsize=1)
def interpreted() -> bool:
    """True if this process's kernels run in the Triton interpreter (``TRITON_INTERPRET=1`` at import)."""
    if not triton_installed():
        return False
    from toklip_kernels.attention import triton_fwd

    return triton_fwd.INTERPRETED


def interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").lower() in {"1", "true", "yes", "on"}


def device_reason(device: torch.device) -> str | None:
    """None if the Triton kernels can run on tensors on `device`, else the reason they cannot."""
    if not triton_installed():
        return "triton is not installed (pip install 'triton>=3.0')"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not interpret_requested():
            return "Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on CPU, for tests)"
        if not interpreted():
            return "TRITON_INTERPRET=1 was set after the kernels were imported; set it before importing toklip_kernels"
        return None
    return f"Triton kernels do not run on {device.type} tensors"


def dtype_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    allowed = INTERPRETER_DTYPES if device.type == "cpu" or interpreted() else GPU_DTYPES
    if dtype not in allowed:
        where = "the Triton interpreter" if device.type == "cpu" or interpreted() else "the Triton kernels"
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        return f"{where} take {names}, got {str(dtype).replace('torch.', '')}"
    return None


def reason(t: torch.Tensor) -> str | None:
    """None if the Triton kernels can take `t` (device and dtype), else why not."""
    return device_reason(t.device) or dtype_reason(t.device, t.dtype)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def split_head_dim(d: int) -> tuple[int, int]:
    """d = D0 + (rest padded to D1): a power-of-two main part and a power-of-two tail of at least 16 (0 if none).

    72 -> (64, 16) (80 wide, not 128), 80 -> (64, 16), 96 -> (64, 32), 64 -> (64, 0), 16 -> (16, 0)."""
    if d <= 16:
        return 16, 0
    main = 1 << (d.bit_length() - 1)
    rest = d - main
    return main, (max(16, next_pow2(rest)) if rest else 0)


# Tests set this to launch the interpreter with the GPU launch configs (big tiles, token splits sized for the
# GPU), so that code path is exercised without a GPU. Autotuning still needs a GPU.
FORCE_GPU_CONFIGS = False


def gpu_configs(t: torch.Tensor) -> bool:
    """Launch with the GPU configs (compiled kernels on CUDA, or forced by tests), else the interpreter's."""
    return FORCE_GPU_CONFIGS or (t.device.type == "cuda" and not interpreted())


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # an H100's, for FORCE_GPU_CONFIGS runs on the CPU
    return torch.cuda.get_device_properties(device.index or 0).multi_processor_count


# Tests set this to fill every kernel output with NaN before launch, so an element a kernel fails to write
# shows up as NaN instead of passing by luck with whatever memory held.
POISON_OUTPUTS = False


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs (NaN-filled when POISON_OUTPUTS is set)."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(*shape, dtype=dtype, device=device)
