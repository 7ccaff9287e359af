"""The tokenizer a run uses: a registered VQ (``--vq``) or a full TokLIP model (``--model``), how to rebuild it
(recorded in the manifest, so ``verify`` decodes with the same weights), and batched encoding.

Precision. ``fp32`` runs everything in float32. ``bf16`` runs the VQ *encoder* under bf16 autocast (with
``channels_last``) and the nearest-code search in float32: bf16 distances flip near-ties (about 8 % of the
indices of the full-size LlamaGen VQ), fp32 distances on a bf16 latent keep nearly all of them. The split needs
the VQ's latent -> indices step: LlamaGen's ``quantize``, or any VQ with ``encode_latent(images) -> latent`` and
``quantize_latent(latent) -> indices`` methods. A VQ without them runs in fp32 (with a warning), never silently
in bf16 distances.

On CPU the VQ encodes at most ``cpu_chunk_pixels`` input pixels per call (default 256 x 256: one image at 256 px,
16 at 64 px) whatever the batch size: the full-size LlamaGen encoder's activations at 256 px (128 channels x 256 x
256 per image) outgrow the caches, so a batch of 4 is 0.7-0.9x the images/s of batch 1 on the 2-core dev CPU, while
small images still gain from batching (the 64-px test VQ: 2x from chunks of 1 to 16).

On CPU, bf16 is fast only where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates it
and it is several times *slower* than fp32 (a warning says so). ``winograd`` is the CPU mode for those CPUs: fp32
throughout, with the large 3x3 encoder convolutions done by Winograd's algorithm (:mod:`toklip.tokenize.fastconv`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError
from toklip.weights.identity import state_dict_sha256

log = logging.getLogger("toklip")
PRECISIONS = ("auto", "fp32", "bf16", "winograd")


@dataclass
class TokenizerSpec:
    """How to rebuild the tokenizer: ``source`` is "vq" (``name`` a registered VQ) or "model" (``name`` what
    ``--model`` takes). ``weights`` is a file, a tag, or None for random weights drawn after ``seed``."""

    source: str
    name: str
    weights: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    random_weights: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX512-BF16 / AMX) rather than emulating it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"--dtype {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _latent_split(vq: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None:
    enc, quant = getattr(vq, "encode_latent", None), getattr(vq, "quantize_latent", None)
    if callable(enc) and callable(quant):
        return enc, quant
    from toklip.builtin.llamagen import LlamaGenVQ

    if isinstance(vq, LlamaGenVQ):
        return (lambda x: vq.quant_conv(vq.encoder(x))), (lambda z: vq.quantize(z)[0])
    return None


class Tokenizer:
    """A VQ (and optionally the TokLIP model around it) on one device, in eval mode, with batched encoding."""

    def __init__(self, spec: TokenizerSpec, vq: nn.Module, *, model: Any = None, image_size: int | None = None,
                 device: torch.device, precision: str = "fp32", cpu_chunk_pixels: int = 256 * 256) -> None:
        self.spec, self.vq, self.model, self.device = spec, vq, model, device
        self.image_size = int(model.image_size) if model is not None else image_size
        side = int(self.image_size or 256)
        self.chunk = max(1, cpu_chunk_pixels // (side * side)) if device.type == "cpu" else None
        self.precision = precision
        self.vocab_size, self.downsample = int(vq.vocab_size), int(vq.downsample)
        self.weights_sha256 = state_dict_sha256(vq)
        self.model_sha256 = state_dict_sha256(model) if model is not None else None
        self._split = _latent_split(vq)
        if precision == "bf16" and self._split is None:
            warnings.warn(f"{spec.name}: this VQ has no encode_latent/quantize_latent split, so bf16 would compute "
                          "the codebook distances in bf16 too; encoding in fp32 instead", stacklevel=2)
            self.precision = "fp32"
        if self.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn("this CPU has no native bf16 (AVX512-BF16 or AMX): oneDNN emulates bf16 convolutions, "
                          "which makes --dtype bf16 several times slower than fp32 here; --dtype winograd is the "
                          "fast CPU mode", stacklevel=2)
        if self.precision == "winograd":
            self._use_winograd()
        # oneDNN's bf16 convolutions are ~25x slower on NCHW than on NHWC tensors; fp32 ones ~10 % faster on NHWC
        # (2-core Cascade Lake, full-size LlamaGen at 256 px, indices identical); NNPACK's Winograd takes NCHW
        self.channels_last = self.precision in ("bf16", "fp32")
        if self.channels_last:
            self.vq.to(memory_format=torch.channels_last)

    def _use_winograd(self) -> None:
        from toklip.tokenize.fastconv import nnpack_works, use_winograd

        if self.device.type != "cpu":
            raise ConfigError("--dtype winograd is a CPU mode; on a GPU use --dtype bf16 (or fp32)")
        switched = use_winograd(getattr(self.vq, "encoder", self.vq)) if nnpack_works() else 0
        if not switched:
            warnings.warn(f"{self.spec.name}: NNPACK's Winograd convolution is unavailable here (or the encoder "
                          "has no eligible 3x3 convolution); encoding in plain fp32", stacklevel=3)
            self.precision = "fp32"

    @property
    def grid(self) -> tuple[int, int]:
        side = int(self.image_size) // self.downsample
        return side, side

    def describe_precision(self) -> dict[str, str]:
        if self.precision == "bf16":
            return {"encoder": "bf16 autocast", "distances": "fp32"}
        if self.precision == "winograd":
            return {"encoder": "fp32, Winograd 3x3 convolutions (NNPACK)", "distances": "fp32"}
        return {"encoder": "fp32", "distances": "fp32"}

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.inference_mode()
    def indices(self, images: Tensor) -> Tensor:
        """images ``[B, 3, S, S]`` in [-1, 1] -> indices ``[B, N]`` int64 (on the device)."""
        if self.chunk and images.shape[0] > self.chunk:
            return torch.cat([self._indices(part) for part in images.split(self.chunk)])
        return self._indices(images)

    def _indices(self, images: Tensor) -> Tensor:
        from toklip.layers.vq import check_images

        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        b = images.shape[0]
        if self.precision != "bf16" or self._split is None:
            return self.vq.encode(images).indices.reshape(b, -1)
        to_latent, quantize = self._split
        check_images(images, downsample=self.downsample)
        with self._autocast():
            latent = to_latent(images)
        with torch.autocast(self.device.type, enabled=False):
            return quantize(latent.float()).reshape(b, -1)

    @torch.inference_mode()
    def pooled(self, indices: Tensor) -> Tensor:
        """indices ``[B, N]`` -> the model's pooled embedding ``[B, D]`` (needs ``--model``)."""
        return self.features(indices, ("pooled",))["pooled"]

    @torch.inference_mode()
    def features(self, indices: Tensor, wanted: tuple[str, ...]) -> dict[str, Tensor]:
        """indices ``[B, N]`` -> the model's ``pooled`` embedding ``[B, D]`` and/or its per-token ``tokens``
        features ``[B, N, D]`` (float32), from one pass of the semantic path (needs ``--model``)."""
        if self.model is None:
            raise ConfigError(f"--features {','.join(wanted)} needs a TokLIP model (--model), not a bare VQ (--vq)")
        with self._autocast():
            out = self.model.tokenize_indices(indices)
        by_name = {"pooled": out.pooled, "tokens": out.features}
        return {name: by_name[name].float() for name in wanted}

    @torch.inference_mode()
    def decode(self, indices: Tensor) -> Tensor:
        """indices ``[B, N]`` -> images ``[B, 3, S, S]`` in [-1, 1] (float32)."""
        h, w = self.grid
        return self.vq.decode(indices.to(self.device).reshape(-1, h, w)).float()


def build_tokenizer(spec: TokenizerSpec, *, device: str = "auto", image_size: int | None = None,
                    precision: str = "auto") -> Tokenizer:
    """Build (or load) what ``spec`` names on ``device``; random weights are drawn right after ``seed``."""
    from toklip.model.loading import load_model, resolve_device

    dev = resolve_device(device)
    torch.manual_seed(spec.seed)
    if spec.source == "model":
        model = load_model(spec.name, weights=spec.weights, random_weights=spec.random_weights, device=str(dev),
                           dtype="float32")
        if image_size is not None and image_size != model.image_size:
            raise ConfigError(f"--image-size {image_size} differs from the model's {model.image_size}; drop it")
        return Tokenizer(spec, model.vq, model=model, device=dev, precision=resolve_precision(precision, dev))
    if spec.source != "vq":
        raise ConfigError(f"unknown tokenizer source {spec.source!r} (expected 'vq' or 'model')")
    vq = build_vq(spec).to(dev).float().eval()
    if image_size is None:
        raise ConfigError("--vq needs --image-size (the VQ takes any multiple of its downsample factor)")
    if image_size % int(vq.downsample):
        raise ConfigError(f"--image-size {image_size} is not a multiple of {spec.name}'s downsample factor "
                          f"{vq.downsample}")
    return Tokenizer(spec, vq, image_size=image_size, device=dev, precision=resolve_precision(precision, dev))


def build_vq(spec: TokenizerSpec) -> nn.Module:
    from toklip.core.host import get_spec
    from toklip.weights.hub import resolve_weights

    component = get_spec("vq", spec.name)
    component.check_requirements()
    kwargs = dict(spec.args)
    if spec.weights:
        kwargs["pretrained"] = str(resolve_weights(component, spec.weights))
    elif component.pretrained and not spec.random_weights:
        tags = ", ".join(component.pretrained)
        raise ConfigError(f"VQ {component.name!r} has released weights ({tags}): pass --vq-weights TAG|FILE "
                          "(t2i and c2i VQs give different tokens), or --random-weights to tokenize with random ones")
    else:
        log.warning("VQ %s has random weights (seed %d): the tokens carry no meaning", component.name, spec.seed)
    return component.create(**kwargs)
