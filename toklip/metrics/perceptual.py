"""rFID and LPIPS through torchmetrics, with weights the user supplies: nothing downloads at run time.

- rFID: ``torchmetrics.image.fid.FrechetInceptionDistance`` with torch-fidelity's InceptionV3 loaded from
  ``--inception-weights`` (torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth``), 2048 pool features, images
  resized bilinearly to 299 inside the metric; the reference set is the original images. Any ``nn.Module``
  feature extractor works too (it receives the [0, 1] float images; the tests use a small deterministic one). Always report the evaluator with the
  number: other FID implementations differ by a factor of two on the same images (LlamaGen issue #34).
- LPIPS: torchmetrics' LPIPS network with its shipped linear heads and the AlexNet/VGG16 backbone from
  ``--lpips-weights`` (a torchvision ``alexnet``/``vgg16`` state dict file), loaded with ``weights_only=True``.

Without the file, :class:`MetricUnavailable` says which one to pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


class MetricUnavailable(ConfigError):
    """A metric that needs a file (or package) the user has not given; the message names it."""


class FIDMetric:
    """rFID of reconstructions against their originals, both [0, 1] images ``[B, 3, H, W]``."""

    def __init__(self, weights: str | Path | None = None, feature: nn.Module | None = None) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        if feature is not None:
            self.fid = FrechetInceptionDistance(feature=feature, normalize=True)
            self.evaluator = f"torchmetrics FID, custom features ({type(feature).__name__})"
            return
        if weights is None:
            raise MetricUnavailable(f"rFID needs Inception weights: pass --inception-weights {INCEPTION_FILE} "
                                    "(torch-fidelity's release file); nothing is downloaded")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"--inception-weights {str(path)!r} does not exist")
        try:
            import torch_fidelity  # noqa: F401
        except ImportError as e:
            raise MetricUnavailable("rFID with Inception needs torch-fidelity: pip install torch-fidelity") from e
        self.fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
        self.evaluator = "torchmetrics FID (torch-fidelity InceptionV3, 2048 pool features, bilinear resize to 299)"

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.fid.update(real.float().cpu(), real=True)
        self.fid.update(fake.float().cpu(), real=False)

    def compute(self) -> float:
        return float(self.fid.compute())


class LPIPSMetric:
    """Mean LPIPS between [-1, 1] images ``[B, 3, H, W]`` (lower is closer)."""

    def __init__(self, weights: str | Path | None, net: str = "alex") -> None:
        if weights is None:
            raise MetricUnavailable(f"LPIPS needs the {net} backbone weights: pass --lpips-weights FILE (torchvision's "
                                    f"{'alexnet-owt-7be5be79.pth' if net == 'alex' else 'vgg16-397923af.pth'}); "
                                    "nothing is downloaded")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"--lpips-weights {str(path)!r} does not exist")
        from torchmetrics.functional.image.lpips import _LPIPS

        self.net = _LPIPS(pretrained=True, net=net, pnet_rand=True).eval()  # shipped heads, backbone from the file
        load_backbone(self.net.net, path)
        self.total, self.count = 0.0, 0

    @torch.no_grad()
    def update(self, a: Tensor, b: Tensor) -> None:
        d = self.net(a.float().cpu().clamp(-1, 1), b.float().cpu().clamp(-1, 1)).reshape(-1)
        self.total += float(d.sum())
        self.count += d.numel()

    def compute(self) -> float:
        return self.total / max(self.count, 1)


def load_backbone(backbone: nn.Module, path: Path) -> None:
    """Load torchvision ``features.{i}.*`` keys into torchmetrics' ``slice{k}.{i}.*`` modules, strictly."""
    from toklip.checkpoints import read_checkpoint

    state: Any = read_checkpoint(path)
    if not isinstance(state, dict):
        raise ConfigError(f"{path} does not hold a state dict")
    mapped = {}
    for name, _ in backbone.state_dict().items():
        _, index, leaf = name.split(".", 2)
        key = f"features.{index}.{leaf}"
        if key not in state:
            raise ConfigError(f"{path} has no {key!r}: expected a torchvision alexnet/vgg16 state dict")
        mapped[name] = state[key]
    backbone.load_state_dict(mapped, strict=True)
