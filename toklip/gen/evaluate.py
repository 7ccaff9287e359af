"""Evaluating generated images: FID and IS with the user's Inception file, FID in TokLIP's or its teacher's
embedding space (fully offline), and class consistency of c2i samples (zero-shot top-1 == conditioning label).

Every image passes through uint8 first, as it would be saved (LlamaGen's ``clamp(127.5 x + 128)``), so a tensor of
samples, a folder of their PNGs and an ADM ``.npz`` of them give the same numbers. Every result records its
evaluator, resize rule, reference (path and sha256) and sample count: FID implementations differ by up to 2x on
the same images (LlamaGen issue #34), so a number without them is not comparable.

Image sources (``samples``, ``reference``): a tensor ``[N, 3, H, W]`` or an iterable of batches (float in [-1, 1],
what generators return, or uint8), a folder of images (sorted, recursive), or an ``.npz`` with uint8 images
``[N, H, W, 3]`` in ``arr_0`` (ADM's sample and reference batches). A reference may also be statistics: an
``.npz`` with ``mu`` and ``sigma`` (:func:`save_reference_stats`, or ADM's ``VIRTUAL_imagenet256_labeled.npz``).
Samples are consumed only after the weights and the reference are checked: a generator that samples lazily
does no work for an evaluation that would fail.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toklip.core.errors import ConfigError, InputError

SPACES = ("toklip", "teacher")


# ------------------------------------------------------------------------------------------------ images
class _Images:
    """uint8 batches ``[b, 3, H, W]`` (b <= batch_size) of one source, and what it was (``record``, complete once
    iterated). ``crop``: ADM centre crop of decoded files; ``resize``: bicubic resize (LlamaGen's
    ``--image-size-eval``; float batches before quantising); ``limit``: the first images only; ``expect``: the
    shape ``[3, H, W]`` the first batch must have (the reference's)."""

    def __init__(self, source: Any, what: str, *, batch_size: int, crop: int | None = None,
                 resize: int | None = None, limit: int | None = None,
                 expect: tuple[int, ...] | None = None) -> None:
        self.source, self.what, self.batch_size = source, what, batch_size
        self.crop, self.resize, self.limit, self.expect = crop, resize, limit, expect
        self.record: dict[str, Any] = {}
        self.shape: tuple[int, ...] | None = None

    def __iter__(self) -> Iterator[Tensor]:
        count = 0
        for batch in self._batches():
            r = self.resize
            if r is not None and tuple(batch.shape[-2:]) != (r, r):  # uint8 files: to [-1, 1], resize, quantise
                x = F.interpolate(batch.float() / 127.5 - 1, size=(r, r), mode="bicubic", align_corners=False)
                batch = self._to_uint8(x.clamp(-1, 1))
            if self.shape is None:
                self.shape = tuple(batch.shape[1:])
                if self.expect is not None and self.shape != tuple(self.expect):
                    h, w = self.expect[1:]
                    raise InputError(f"{self.what} are {self.shape[1]}x{self.shape[2]} but the reference images are "
                                     f"{h}x{w}: generate at that size or pass sample_size={h} (LlamaGen's "
                                     "--image-size-eval)")
            elif tuple(batch.shape[1:]) != self.shape:
                raise InputError(f"{self.what}: images of shape {list(batch.shape[1:])} after {count} of shape "
                                 f"{list(self.shape)}; every image must have one size (crop= or sample_size=)")
            if self.limit is not None:
                batch = batch[: self.limit - count]
            count += len(batch)
            yield batch
            if self.limit is not None and count >= self.limit:
                break
        self.record["images"] = count

    def _batches(self) -> Iterator[Tensor]:
        src = self.source
        if isinstance(src, (str, Path)):
            path = Path(src).expanduser()
            if path.is_dir():
                yield from self._folder(path)
            elif path.is_file() and path.suffix == ".npz":
                self.record.update(kind="npz arr_0 images", path=str(path), sha256=sha256_file(path))
                yield from self._split(_npz_images(path))
            elif not path.exists():
                raise InputError(f"{self.what} {str(path)!r} does not exist")
            else:
                raise InputError(f"{self.what} {str(path)!r} is neither a folder of images nor an .npz file")
            return
        self.record.update(kind="tensor batches")
        batches = [src] if isinstance(src, Tensor) else src
        if not isinstance(batches, Iterable):
            raise InputError(f"{self.what} must be image batches, a folder or an .npz, got {type(src).__name__}")
        for batch in batches:
            yield from self._split(self._to_uint8(batch))

    def _split(self, images: Tensor) -> Iterator[Tensor]:
        for i in range(0, len(images), self.batch_size):
            yield images[i : i + self.batch_size]

    def _to_uint8(self, batch: Any) -> Tensor:
        from toklip.metrics.image import to_unit_range

        if not isinstance(batch, Tensor):
            raise InputError(f"{self.what}: expected image tensors [B, 3, H, W], got a {type(batch).__name__}")
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise InputError(f"{self.what}: expected images [B, 3, H, W], got shape {list(batch.shape)}")
        batch = batch.detach()
        if batch.dtype != torch.uint8:
            if not batch.is_floating_point() or not bool(torch.isfinite(batch).all()):
                raise InputError(f"{self.what}: expected finite float images in [-1, 1] or uint8, got {batch.dtype}"
                                 + ("" if not batch.is_floating_point() else " with NaN/inf"))
            lo, hi = float(batch.min()), float(batch.max())
            if lo < -1.01 or hi > 1.01:
                raise InputError(f"{self.what}: float images must lie in [-1, 1] (what generators return), got "
                                 f"[{lo:.3g}, {hi:.3g}]; pass uint8 for 0..255 pixels")
            r = self.resize
            if r is not None and tuple(batch.shape[-2:]) != (r, r):  # before quantising, as LlamaGen does
                batch = F.interpolate(batch.float(), size=(r, r), mode="bicubic", align_corners=False)
            batch = (to_unit_range(batch.clamp(-1, 1)) * 255).round().to(torch.uint8)
        return batch.cpu()

    def _folder(self, root: Path) -> Iterator[Tensor]:
        from toklip.data.preprocess import load_image
        from toklip.data.sources import IMAGE_EXTS

        files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
        if self.limit is not None:
            files = files[: self.limit]
        if not files:
            raise InputError(f"{self.what} folder {str(root)!r} contains no images ({', '.join(IMAGE_EXTS)})")
        digest = hashlib.sha256()
        self.record.update(kind="folder", path=str(root),
                           hashed="sha256 over sorted (relative path, sha256 of the file's bytes)")
        for i in range(0, len(files), self.batch_size):
            arrays = []
            for p in files[i : i + self.batch_size]:
                data = p.read_bytes()
                digest.update(f"{p.relative_to(root)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
                image = load_image(data, name=str(p))
                if self.crop is not None:
                    from toklip.tokenize.augment import adm_center_crop

                    image = adm_center_crop(image, self.crop)
                arrays.append(np.asarray(image, dtype=np.uint8))
            self.record["sha256"] = digest.hexdigest()  # kept current: a limit may stop the reading early
            sizes = {a.shape for a in arrays}
            if len(sizes) > 1:
                raise InputError(f"{self.what}: the images in {root} are not all one size (e.g. "
                                 f"{sorted(f'{s[1]}x{s[0]}' for s in sizes)}); pass crop=SIZE to centre-crop them "
                                 "as ADM's reference batches are made")
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_npz(path: Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Those of ``keys`` (default: all) that an ``.npz`` has, never unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (z.files if keys is None else keys) if k in z.files}
    except (OSError, ValueError, EOFError) as e:  # not a zip, truncated, or object (pickled) arrays
        raise InputError(f"{path} is not a readable .npz of plain arrays ({e})") from e


def npz_keys(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path} is not a readable .npz of plain arrays ({e})") from e


def _npz_images(path: Path) -> Tensor:
    images = read_npz(path, ("arr_0",)).get("arr_0")
    if images is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        found = "no arr_0" if images is None else f"arr_0 {images.dtype} {list(images.shape)}"
        raise InputError(f"{path}: expected uint8 images [N, H, W, 3] in arr_0 (ADM's layout) or mu/sigma "
                         f"statistics, found {found} (keys {npz_keys(path)})")
    return torch.from_numpy(images).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------ statistics
def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64 (torchmetrics' ``_compute_fid``)."""
    from torchmetrics.image.fid import _compute_fid

    m1, s1, m2, s2 = (torch.as_tensor(t).to(device="cpu", dtype=torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    return float(_compute_fid(m1, s1, m2, s2))


@dataclass
class GaussianStats:
    """Running float64 mean and covariance (``n - 1``, like ``np.cov`` and torchmetrics) of features [B, D]."""

    total: Tensor | None = None
    outer: Tensor | None = None
    n: int = 0

    def update(self, features: Tensor) -> None:
        f = features.detach().to(torch.float64).reshape(len(features), -1)
        if self.total is None:
            self.total, self.outer = f.sum(0), f.T @ f
        else:
            if f.shape[1] != self.total.shape[0]:
                raise InputError(f"feature width changed from {self.total.shape[0]} to {f.shape[1]}")
            self.total, self.outer = self.total + f.sum(0), self.outer + f.T @ f
        self.n += len(f)

    def mu_sigma(self, what: str) -> tuple[Tensor, Tensor]:
        if self.n < 2 or self.total is None or self.outer is None:
            raise InputError(f"FID needs at least 2 {what}, got {self.n}")
        mu = self.total / self.n
        return mu.cpu(), ((self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)).cpu()


# ------------------------------------------------------------------------------------------------ feature spaces
@dataclass
class FeatureSpace:
    """How images become features: ``extract(uint8 [B, 3, H, W]) -> (features [B, D], logits [B, K] or None)``."""

    evaluator: str
    resize: str
    extract: Callable[[Tensor], tuple[Tensor, Tensor | None]]
    extra: dict[str, Any] = field(default_factory=dict)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def inception_space(inception_weights: str | Path | None, *, feature: nn.Module | None = None,
                    device: str | torch.device | None = None) -> FeatureSpace:
    """torchmetrics' FID InceptionV3 with the user's weights (2048 pool features and IS logits from one pass), or
    ``feature``: any module taking uint8 ``[B, 3, H, W]`` to features ``[B, D]`` or ``(features, logits)``."""
    import torchmetrics

    if feature is not None:
        dev = next(iter(feature.parameters()), torch.empty(0)).device

        def run_custom(x: Tensor) -> tuple[Tensor, Tensor | None]:
            out = feature(x.to(dev))
            return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)

        return FeatureSpace(f"custom feature network {type(feature).__name__} (toklip float64 FID, torchmetrics "
                            f"{torchmetrics.__version__} IS)", "none: the network receives the uint8 images as given",
                            run_custom)
    from toklip.metrics.perceptual import inception_network

    dev = _device(device)
    net = inception_network(inception_weights, ("2048", "logits_unbiased")).to(dev)  # checks torch-fidelity too
    import torch_fidelity
    path = Path(inception_weights).expanduser()  # type: ignore[arg-type]

    def run_inception(x: Tensor) -> tuple[Tensor, Tensor | None]:
        pool, logits = net._torch_fidelity_forward(x.to(dev))
        return pool, logits

    return FeatureSpace(
        f"torchmetrics {torchmetrics.__version__} FrechetInceptionDistance feature extractor (NoTrainInceptionV3, "
        f"torch-fidelity {torch_fidelity.__version__} InceptionV3), feature 2048; IS on logits_unbiased",
        "uint8 input, bilinear (antialias) resize to 299x299 inside torchmetrics' Inception, then (x - 128) / 128",
        run_inception, {"weights": {"path": str(path), "sha256": sha256_file(path)}})


def model_inputs(images: Tensor, model: Any) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> the model's [-1, 1] input at its size (toklip's eval transform when resized)."""
    from toklip.tokenize.augment import to_model_range

    s = int(model.image_size)
    if tuple(images.shape[-2:]) != (s, s):
        from PIL import Image

        from toklip.data.preprocess import resize_and_crop

        images = torch.stack([torch.from_numpy(np.array(resize_and_crop(
            Image.fromarray(im.permute(1, 2, 0).numpy()), s, model.config.resize_mode))).permute(2, 0, 1)
            for im in images.cpu()])
    return to_model_range(images).to(model.device)


def _fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_space(encoder: Any, space: str = "toklip") -> FeatureSpace:
    """TokLIP's pooled image embedding (``encode_image``, not normalised) or its teacher's (the semantic encoder's
    own image tower, :func:`toklip.train.step.build_teacher`)."""
    from toklip import __version__

    if space not in SPACES:
        raise ConfigError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if space == "teacher":
        from toklip.train.step import build_teacher

        teacher = build_teacher(encoder)
        net, embed = teacher.vit, (lambda x: teacher(x)[0])
    else:
        net, embed = encoder, (lambda x: encoder.encode_image(x))
    name = getattr(getattr(encoder, "config", None), "name", None) or type(encoder).__name__
    fp = _fingerprint(net)

    @torch.no_grad()
    def run(x: Tensor) -> tuple[Tensor, Tensor | None]:
        was = encoder.training
        encoder.eval()
        try:
            return embed(model_inputs(x, encoder)).float(), None
        finally:
            encoder.train(was)

    s = encoder.image_size
    return FeatureSpace(f"toklip {__version__} {space} pooled embedding of {name} (weights sha256 {fp[:16]}), "
                        "float64 Frechet distance (torchmetrics _compute_fid)",
                        f"uint8 input; to {s}x{s} with toklip's eval transform (PIL bicubic, "
                        f"{encoder.config.resize_mode}) when another size, then [-1, 1]", run,
                        {"weights": {"sha256": fp}})


# ------------------------------------------------------------------------------------------------ references
def _measure(images: _Images, space: FeatureSpace, *,
             keep_logits: bool = False) -> tuple[GaussianStats, list[Tensor]]:
    stats, logits = GaussianStats(), []
    with torch.no_grad():
        for batch in images:
            feats, lg = space.extract(batch)
            if feats.dim() != 2 or len(feats) != len(batch):
                raise ConfigError(f"the feature network returned shape {list(feats.shape)} for {len(batch)} images; "
                                  "expected [B, D]")
            stats.update(feats)
            if keep_logits and lg is not None:
                logits.append(lg.float().cpu())
    return stats, logits


def _reference(reference: Any, space: FeatureSpace, *, batch_size: int, crop: int | None,
               use_stats: bool | None) -> tuple[Tensor, Tensor, dict[str, Any], tuple[int, ...] | None]:
    """-> (mu, sigma, record, image shape [3, H, W] or None)."""
    path = Path(reference).expanduser() if isinstance(reference, (str, Path)) else None
    if path is not None and path.suffix == ".npz" and path.is_file():
        keys = npz_keys(path)
        ours = "evaluator" in keys
        has_stats = "mu" in keys and "sigma" in keys
        if use_stats is True and not has_stats:
            raise InputError(f"{path} has no mu/sigma statistics (keys {keys})")
        if has_stats and (use_stats or (use_stats is None and (ours or "arr_0" not in keys))):
            stat_keys = ("mu", "sigma", "n", "evaluator", "resize", "image_shape")
            return _stats_reference(read_npz(path, stat_keys), path, space, ours)
    images = _Images(reference, "reference", batch_size=batch_size, crop=crop)
    stats, _ = _measure(images, space)
    mu, sigma = stats.mu_sigma("reference images")
    return mu, sigma, {**images.record, "n": stats.n}, images.shape


def _stats_reference(arrays: dict[str, np.ndarray], path: Path, space: FeatureSpace,
                     ours: bool) -> tuple[Tensor, Tensor, dict[str, Any], tuple[int, ...] | None]:
    mu, sigma = torch.from_numpy(arrays["mu"]).double(), torch.from_numpy(arrays["sigma"]).double()
    if mu.dim() != 1 or tuple(sigma.shape) != (len(mu), len(mu)):
        raise InputError(f"{path}: mu {list(mu.shape)} and sigma {list(sigma.shape)} are not a [D] mean and a "
                         "[D, D] covariance")
    record: dict[str, Any] = {"kind": "statistics", "path": str(path), "sha256": sha256_file(path)}
    if ours:
        made_with = str(arrays["evaluator"])
        if made_with != space.evaluator:
            raise InputError(f"{path} was made with {made_with!r}, but these samples are measured with "
                             f"{space.evaluator!r}; remake it with save_reference_stats and the same evaluator")
        record.update(n=int(arrays["n"]), evaluator=made_with, resize=str(arrays["resize"]))
        shape = tuple(int(v) for v in arrays["image_shape"]) if "image_shape" in arrays else None
        return mu, sigma, record, shape
    note = ("mu/sigma not written by toklip: their evaluator is unknown (ADM's reference batches use the "
            "TensorFlow Inception), so this FID mixes evaluators; pass the images (arr_0 or a folder) to measure "
            "both sides with one")
    warnings.warn(f"{path}: {note}", stacklevel=3)
    record.update(n=None, evaluator="unknown", note=note)
    return mu, sigma, record, None


def save_reference_stats(folder_or_batches: Any, path: str | Path, *, inception_weights: str | Path | None = None,
                         feature: nn.Module | None = None, encoder: Any = None, space: str = "inception",
                         batch_size: int = 50, device: str | None = None, crop: int | None = None) -> dict[str, Any]:
    """Measure reference images once and write ``mu``, ``sigma``, ``n``, ``evaluator``, ``resize`` (and the image
    shape and source record) to an ``.npz``, atomically. ``space``: ``"inception"`` (``inception_weights`` or
    ``feature``), ``"toklip"`` or ``"teacher"`` (``encoder``). -> what was written, without the arrays."""
    from toklip.core.io import atomic_write

    fs = _space(space, inception_weights=inception_weights, feature=feature, encoder=encoder, device=device)
    images = _Images(folder_or_batches, "reference", batch_size=batch_size, crop=crop)
    stats, _ = _measure(images, fs)
    mu, sigma = stats.mu_sigma("reference images")
    meta = {"n": stats.n, "evaluator": fs.evaluator, "resize": fs.resize, "source": images.record, **fs.extra}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, mu=mu.numpy(), sigma=sigma.numpy(), n=np.int64(stats.n), evaluator=np.str_(fs.evaluator),
                     resize=np.str_(fs.resize), image_shape=np.asarray(images.shape, dtype=np.int64),
                     source=np.str_(json.dumps(meta)))

    atomic_write(Path(path).expanduser(), write)
    return {"path": str(path), **meta}


def _space(space: str, *, inception_weights: Any, feature: nn.Module | None, encoder: Any,
           device: str | None) -> FeatureSpace:
    if space == "inception":
        return inception_space(inception_weights, feature=feature, device=device)
    if encoder is None:
        raise ConfigError(f"space={space!r} measures with a TokLIP model: pass encoder=MODEL")
    return model_space(encoder, space)


# ------------------------------------------------------------------------------------------------ FID, IS
def _fid(samples: Any, reference: Any, space: FeatureSpace, *, n: int | None, batch_size: int, crop: int | None,
         sample_size: int | None, reference_stats: bool | None,
         keep_logits: bool) -> tuple[dict[str, Any], list[Tensor]]:
    if n is not None and n < 2:
        raise InputError(f"FID needs at least 2 samples, got n={n}")
    mu_r, sigma_r, ref_record, ref_shape = _reference(reference, space, batch_size=batch_size, crop=crop,
                                                      use_stats=reference_stats)
    images = _Images(samples, "samples", batch_size=batch_size, crop=crop, resize=sample_size, limit=n,
                     expect=ref_shape)
    stats, logits = _measure(images, space, keep_logits=keep_logits)
    if n is not None and stats.n < n:
        raise InputError(f"n={n} samples asked for, but the samples hold only {stats.n}")
    mu_s, sigma_s = stats.mu_sigma("samples")
    if len(mu_s) != len(mu_r):
        raise InputError(f"sample features are {len(mu_s)}-d but the reference statistics are {len(mu_r)}-d")
    result = {"fid": frechet_distance(mu_s, sigma_s, mu_r, sigma_r), "n": stats.n, "feature_dim": len(mu_s),
              "evaluator": space.evaluator, "resize": space.resize, "samples": images.record,
              "reference": ref_record, **space.extra}
    if sample_size is not None:
        result["sample_resize"] = (f"bicubic to {sample_size}x{sample_size} before quantising (LlamaGen's "
                                   "--image-size-eval)")
    return result, logits


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float | None]:
    """torchmetrics' ``InceptionScore`` on precomputed logits ``[N, K]`` -> (mean, std over splits); its shuffle
    before splitting is seeded, so the number is reproducible."""
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=nn.Identity(), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # one split: no std
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else None)


def inception_fid_is(samples: Any, reference: Any, *, inception_weights: str | Path | None = None,
                     n: int | None = None, batch_size: int = 50, device: str | None = None, splits: int = 10,
                     feature: nn.Module | None = None, crop: int | None = None, sample_size: int | None = None,
                     reference_stats: bool | None = None, seed: int = 0) -> dict[str, Any]:
    """FID of ``samples`` against ``reference`` and the samples' IS, with torchmetrics' FID Inception loaded from
    ``inception_weights`` (nothing downloads) or a custom ``feature`` network. ``n``: the first n samples (all when
    None; fewer is an error). ``reference_stats``: for an ``.npz`` with both mu/sigma and images, True uses the
    statistics, False the images; by default toklip's own statistics files are used as such and foreign ones'
    images are re-measured (so both sides share one evaluator). -> fid, is, is_std, is_splits, n, evaluator,
    resize, reference, samples, weights."""
    if splits < 1:
        raise InputError(f"splits must be >= 1, got {splits}")
    space = inception_space(inception_weights, feature=feature, device=device)
    result, logits = _fid(samples, reference, space, n=n, batch_size=batch_size, crop=crop, sample_size=sample_size,
                          reference_stats=reference_stats, keep_logits=True)
    result.update({"is": None, "is_std": None, "is_splits": splits})
    if not logits:
        result["is_note"] = "the feature network returns no logits"
    elif result["n"] < splits:
        result["is_note"] = f"IS with {splits} splits needs at least {splits} samples"
    else:
        result["is"], result["is_std"] = inception_score(torch.cat(logits), splits, seed)
        result["is_shuffle"] = f"torchmetrics' randperm before splitting, torch.manual_seed({seed})"
    return result


def feature_fid(samples: Any, reference: Any, *, encoder: Any, space: str = "toklip", n: int | None = None,
                batch_size: int = 50, crop: int | None = None, sample_size: int | None = None,
                reference_stats: bool | None = None) -> dict[str, Any]:
    """FID in TokLIP's pooled-embedding space (``space="toklip"``) or its teacher's (``"teacher"``): fully
    offline, no Inception file. Numbers compare only with the same model (its weights hash is recorded)."""
    result, _ = _fid(samples, reference, model_space(encoder, space), n=n, batch_size=batch_size, crop=crop,
                     sample_size=sample_size, reference_stats=reference_stats, keep_logits=False)
    return {**result, "space": space}


# ------------------------------------------------------------------------------------------------ class consistency
@torch.no_grad()
def class_consistency(images: Any, labels: Sequence[int] | Tensor, *, model: Any, class_names: Sequence[str],
                      templates: Any = None, batch_size: int = 50) -> dict[str, Any]:
    """Zero-shot classify c2i samples with a TokLIP/CLIP ``model`` (open_clip's classifier over ``templates``,
    OpenAI's 80 by default) and report how often the prediction is the conditioning label: overall top-1/top-5
    and top-1 per class (label i is ``class_names[i]``)."""
    from toklip.eval.zeroshot import build_classifier, resolve_templates, topk_accuracy

    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    names = [str(c) for c in class_names]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
        raise InputError(f"labels must lie in [0, {len(names)}) (one per class name), got "
                         f"{int(y.min())}..{int(y.max())}")
    temps = resolve_templates(templates)
    weights = build_classifier(model, names, temps).cpu()
    was = model.training
    model.eval()
    try:
        reader = _Images(images, "images", batch_size=batch_size, limit=None)
        feats = [model.encode_image(model_inputs(b, model), normalize=True).float().cpu() for b in reader]
    finally:
        model.train(was)
    logits = 100.0 * torch.cat(feats) @ weights if feats else torch.empty(0, len(names))
    if len(logits) != len(y) or not len(y):
        raise InputError(f"{len(logits)} images for {len(y)} labels; class consistency needs one label per image")
    acc = topk_accuracy(logits, y, (1, 5))
    hit = logits.argmax(1) == y
    per_class = [{"label": c, "name": names[c], "n": int((y == c).sum()), "top1": float(hit[y == c].float().mean())}
                 for c in sorted(set(y.tolist()))]
    s = model.image_size
    return {"top1": acc[1], "top5": acc[5], "n": len(y), "classes": len(names), "templates": len(temps),
            "per_class": per_class, "samples": reader.record,
            "evaluator": f"zero-shot top-1 of {getattr(model.config, 'name', type(model).__name__)}: "
                         "open_clip classifier, 100 * normalised image features @ class weights",
            "resize": f"uint8 input; to {s}x{s} with toklip's eval transform when another size"}
