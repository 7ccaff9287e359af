"""rFID and LPIPS through torchmetrics, with weights the user supplies: nothing downloads at run time.

- rFID: ``torchmetrics.image.fid.FrechetInceptionDistance`` with the FID InceptionV3 (torch-fidelity's network,
  which torchmetrics uses; ``pip install 'toklip[eval]'`` brings torch-fidelity) loaded from
  ``--inception-weights``: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` or pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` (the same network and tensor names). 2048 pool features, images
  resized to 299 inside the metric; the reference set is the original images. The file is read by toklip's safe
  reader (``weights_only``; torch-fidelity itself would unpickle it with ``weights_only=False``), checked, and
  handed to torchmetrics as a tensors-only copy in a private temporary folder. Any ``nn.Module`` feature extractor
  works too (it receives the [0, 1] float images; the tests use a small deterministic one). Always report the
  evaluator with the number: other FID implementations differ by a factor of two on the same images (LlamaGen
  issue #34).
- LPIPS: torchmetrics' LPIPS network with its shipped linear heads and the AlexNet/VGG16 backbone from
  ``--lpips-weights`` (a torchvision ``alexnet``/``vgg16`` state dict file), loaded with ``weights_only=True``.

Without the file, :class:`MetricUnavailable` says which one to pass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from toklip.core.errors import ConfigError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SOURCES = ("torch-fidelity's weights-inception-2015-12-05-6726825d.pth (github.com/toshas/torch-fidelity "
                     "releases, v0.2.0) or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (github.com/mseitzer/"
                     "pytorch-fid releases, fid_weights)")
# Tensors every FID InceptionV3 state dict has, with their shapes (the first conv and the 1008-way TF classifier).
INCEPTION_PROBES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
                    "fc.weight": (1008, 2048), "fc.bias": (1008,)}


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
        with inception_weights_copy(weights, "rFID") as copy:
            self.fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=copy)
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


@contextmanager
def inception_weights_copy(weights: str | Path | None, what: str = "FID") -> Iterator[str]:
    """The user's Inception file, read safely and checked, as a tensors-only copy in a private temporary folder
    (torch-fidelity unpickles it with ``weights_only=False``; only this copy reaches it). Missing file or package
    -> :class:`MetricUnavailable` naming ``--inception-weights PATH`` and where the file comes from."""
    if weights is None:
        raise MetricUnavailable(f"{what} needs Inception weights: pass --inception-weights PATH, the FID InceptionV3 "
                                f"file ({INCEPTION_SOURCES}); nothing is downloaded")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MetricUnavailable(f"--inception-weights {str(path)!r} does not exist; pass --inception-weights PATH, "
                                f"the FID InceptionV3 file ({INCEPTION_SOURCES})")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise MetricUnavailable(f"{what} with Inception needs torch-fidelity: pip install 'toklip[eval]' "
                                "(or pip install torch-fidelity)") from e
    state = read_inception_state(path)
    with tempfile.TemporaryDirectory(prefix="toklip-fid-") as tmp:  # mode 0700: only this user can swap it
        copy = Path(tmp) / "inception.pt"
        torch.save(state, copy)  # tensors only: the one file torch-fidelity's weights_only=False load sees
        try:
            yield str(copy)
        except RuntimeError as e:  # load_state_dict: missing / unexpected / mis-shaped tensors
            raise ConfigError(f"{path} is not an FID InceptionV3 state dict ({str(e).splitlines()[0]}); "
                              f"expected {INCEPTION_FILE}") from e


def inception_network(weights: str | Path | None, features: Sequence[str] = ("2048",)) -> nn.Module:
    """torchmetrics' FID InceptionV3 (``NoTrainInceptionV3``, the network ``FrechetInceptionDistance`` builds) with
    the user's weights, returning ``features`` (``"2048"`` pool, ``"logits_unbiased"``, ...) from one pass through
    its ``_torch_fidelity_forward`` on uint8 images ``[B, 3, H, W]``."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    with inception_weights_copy(weights) as copy:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=list(features),
                                  feature_extractor_weights_path=copy)


def read_inception_state(path: Path) -> dict[str, Tensor]:
    """The FID InceptionV3 tensors of ``path``, read safely and checked for the tensors every such file has."""
    from toklip.weights import read_checkpoint

    state: Any = read_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ConfigError(f"{path} does not hold a state dict of tensors; expected {INCEPTION_FILE}")
    for key, shape in INCEPTION_PROBES.items():
        if key not in state or tuple(state[key].shape) != shape:
            found = tuple(state[key].shape) if key in state else "missing"
            raise ConfigError(f"{path} is not an FID InceptionV3 state dict ({key}: expected shape {shape}, found "
                              f"{found}); pass {INCEPTION_FILE} (torch-fidelity) or pt_inception-2015-12-05-6726825d.pth")
    return state


def load_backbone(backbone: nn.Module, path: Path) -> None:
    """Load torchvision ``features.{i}.*`` keys into torchmetrics' ``slice{k}.{i}.*`` modules, strictly."""
    from toklip.weights import read_checkpoint

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
