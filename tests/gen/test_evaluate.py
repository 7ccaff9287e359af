"""Evaluation of generated images (toklip.gen.evaluate): FID / IS with a small deterministic feature network in
place of Inception, FID in toklip-test's and its teacher's embedding spaces, class consistency with a model whose
answers are known, and the input checks. A random-weight Inception file runs the real path (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from toklip.core.errors import ConfigError, InputError
from toklip.gen.evaluate import (
    class_consistency,
    feature_fid,
    frechet_distance,
    inception_fid_is,
    inception_score,
    save_reference_stats,
)

PALETTE = torch.tensor([[230, 20, 20], [20, 200, 40], [30, 40, 220], [240, 230, 30]], dtype=torch.float64)
NAMES = ["red", "green", "blue", "yellow"]


class ChannelMeans(nn.Module):
    """uint8 [B, 3, H, W] -> (per-channel mean pixel value [B, 3], logits over PALETTE scaled by ``sharp``).

    A mean is linear in the pixels: shifting every pixel by d shifts the mean feature by d and leaves the
    covariance alone, so FID = 3 d^2 exactly (without clipping)."""

    def __init__(self, sharp: float = 1.0) -> None:
        super().__init__()
        self.sharp = sharp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dtype == torch.uint8
        means = x.double().mean(dim=(2, 3))
        return means, -self.sharp * torch.cdist(means, PALETTE)


def noise_images(n: int, size: int = 8, seed: int = 0, lo: int = 40, hi: int = 200) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, 3, size, size), generator=g, dtype=torch.uint8)


def write_folder(root: Path, images: torch.Tensor) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(root / f"{i:04d}.png")
    return root


def colour_images(labels: list[int], size: int = 8) -> torch.Tensor:
    """Solid PALETTE-coloured uint8 images, one per label."""
    return PALETTE[labels].to(torch.uint8)[:, :, None, None].expand(-1, -1, size, size).contiguous()


def scipy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


# ------------------------------------------------------------------------------------------------ Fréchet distance
def test_frechet_distance_of_known_gaussians():
    # diagonal covariances commute: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 9.0]))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5 + (1 - 2) ** 2 + (2 - 3) ** 2, abs=1e-12)
    # a general pair against scipy's sqrtm
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    linalg = pytest.importorskip("scipy.linalg")
    n1, n2 = s1.numpy(), s2.numpy()
    expected = float(np.trace(n1 + n2 - 2 * linalg.sqrtm(n1 @ n2).real))
    assert frechet_distance(torch.zeros(5), s1, torch.zeros(5), s2) == pytest.approx(expected, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_known_shift(tmp_path):
    base = noise_images(16)
    folder = write_folder(tmp_path / "ref", base)
    net = ChannelMeans()
    same = inception_fid_is(base.float() / 127.5 - 1, folder, feature=net, splits=4)  # [-1, 1] floats, quantised
    assert abs(same["fid"]) < 1e-8 and same["n"] == 16 and same["feature_dim"] == 3
    for d in (10, 20):
        shifted = inception_fid_is(base + d, folder, feature=net)  # uint8 batches, no clipping (max 199 + 20)
        assert shifted["fid"] == pytest.approx(3 * d**2, rel=1e-9)


def test_fid_equals_the_formula_on_the_features(tmp_path):
    real, fake = noise_images(24, seed=1), noise_images(20, seed=2, lo=0, hi=255)
    net = ChannelMeans()
    res = inception_fid_is([fake[:7], fake[7:]], write_folder(tmp_path / "ref", real), feature=net, batch_size=5)
    expected = scipy_frechet(net(fake)[0].numpy(), net(real)[0].numpy())
    assert expected > 1.0
    assert res["fid"] == pytest.approx(expected, rel=1e-8)
    assert res["n"] == 20 and res["reference"]["kind"] == "folder" and res["reference"]["n"] == 24
    part = inception_fid_is(fake, write_folder(tmp_path / "ref2", real), feature=net, n=11)  # the first 11 only
    assert part["n"] == 11
    assert part["fid"] == pytest.approx(scipy_frechet(net(fake[:11])[0].numpy(), net(real)[0].numpy()), rel=1e-8)


def test_reference_statistics_equal_the_folder_they_were_made_from(tmp_path):
    real, fake = noise_images(12, seed=3), noise_images(10, seed=4)
    folder = write_folder(tmp_path / "ref", real)
    net = ChannelMeans()
    saved = save_reference_stats(folder, tmp_path / "ref.npz", feature=net)
    assert saved["n"] == 12 and saved["evaluator"].startswith("custom feature network ChannelMeans")
    z = np.load(tmp_path / "ref.npz", allow_pickle=False)
    assert set(z.files) >= {"mu", "sigma", "n", "evaluator", "resize"} and z["sigma"].dtype == np.float64
    from_folder = inception_fid_is(fake, folder, feature=net)
    from_stats = inception_fid_is(fake, tmp_path / "ref.npz", feature=net)
    assert from_stats["fid"] == pytest.approx(from_folder["fid"], rel=1e-12) and from_folder["fid"] > 1
    assert from_stats["reference"]["kind"] == "statistics" and len(from_stats["reference"]["sha256"]) == 64
    # ADM's layout: images in arr_0 (re-measured by default), foreign mu/sigma (used when asked, with a warning)
    np.savez(tmp_path / "adm.npz", arr_0=real.permute(0, 2, 3, 1).numpy(), mu=np.zeros(3), sigma=np.eye(3))
    adm = inception_fid_is(fake, tmp_path / "adm.npz", feature=net)
    assert adm["fid"] == pytest.approx(from_folder["fid"], rel=1e-12) and adm["reference"]["kind"] == "npz arr_0 images"
    np.savez(tmp_path / "samples.npz", arr_0=fake.permute(0, 2, 3, 1).numpy())  # what LlamaGen's sampler writes
    assert inception_fid_is(tmp_path / "samples.npz", folder, feature=net)["fid"] == pytest.approx(from_folder["fid"],
                                                                                                    rel=1e-12)
    with pytest.warns(UserWarning, match="evaluator is unknown"):
        foreign = inception_fid_is(fake, tmp_path / "adm.npz", feature=net, reference_stats=True)
    mu = net(fake)[0].mean(0)
    assert foreign["fid"] > float((mu**2).sum()) * 0.99 and foreign["reference"]["evaluator"] == "unknown"
    # statistics made with another evaluator are refused
    with pytest.raises(InputError, match="remake it with save_reference_stats"):
        inception_fid_is(fake, tmp_path / "ref.npz", feature=nn.Sequential(ChannelMeans()))


# ------------------------------------------------------------------------------------------------ IS
def test_inception_score_of_uniform_and_peaked_predictions(tmp_path):
    labels = [i % 4 for i in range(16)]
    images = colour_images(labels)
    folder = write_folder(tmp_path / "ref", images)
    peaked = inception_fid_is(images, folder, feature=ChannelMeans(sharp=0.2), splits=1)
    assert peaked["is"] == pytest.approx(4.0, rel=1e-9) and peaked["is_splits"] == 1  # 4 classes, each sure
    assert peaked["is_std"] is None  # one split: no spread
    uniform = inception_fid_is(images, folder, feature=ChannelMeans(sharp=0.0), splits=1)
    assert uniform["is"] == pytest.approx(1.0, abs=1e-12)
    one_class = inception_fid_is(colour_images([2] * 16), folder, feature=ChannelMeans(sharp=0.2), splits=1)
    assert one_class["is"] == pytest.approx(1.0, abs=1e-6)  # sure but never diverse
    # the split shuffle is seeded: the same number every call, splits recorded
    logits = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    assert inception_score(logits, splits=4, seed=1) == inception_score(logits, splits=4, seed=1)
    few = inception_fid_is(images[:3], folder, feature=ChannelMeans(), splits=10)
    assert few["is"] is None and "needs at least 10" in few["is_note"]


# ------------------------------------------------------------------------------------------------ feature FID
@pytest.fixture(scope="module")
def tiny_model():
    import toklip

    torch.manual_seed(0)
    return toklip.build("toklip-test").eval()


@pytest.mark.parametrize("space", ["toklip", "teacher"])
def test_feature_fid_in_the_model_spaces(tiny_model, tmp_path, space, monkeypatch):
    from toklip.train import step

    build = step.build_teacher  # toklip-test's teacher is random: the same seed makes it the same teacher each time
    monkeypatch.setattr(step, "build_teacher", lambda m: (torch.manual_seed(0), build(m))[1])
    images = noise_images(12, size=64, seed=5, lo=0, hi=255)
    folder = write_folder(tmp_path / "ref", images)
    same = feature_fid(images.float() / 127.5 - 1, folder, encoder=tiny_model, space=space)
    other = feature_fid(noise_images(12, size=64, seed=6, lo=100, hi=255), folder, encoder=tiny_model, space=space)
    assert other["fid"] > 1e4 * abs(same["fid"]) and other["fid"] > 1e-5  # random tiny model: small distances
    assert same["space"] == space and f"{space} pooled embedding of toklip-test" in same["evaluator"]
    assert same["feature_dim"] == 64 and same["n"] == 12
    stats = tmp_path / "ref.npz"
    save_reference_stats(folder, stats, encoder=tiny_model, space=space)
    again = feature_fid(noise_images(12, size=64, seed=6, lo=100, hi=255), stats, encoder=tiny_model, space=space)
    assert again["fid"] == pytest.approx(other["fid"], rel=1e-9)
    wrong = "teacher" if space == "toklip" else "toklip"
    with pytest.raises(InputError, match="was made with"):
        feature_fid(images, stats, encoder=tiny_model, space=wrong)


def test_feature_fid_resizes_to_the_model_size_and_records_it(tiny_model, tmp_path):
    small = noise_images(6, size=32, seed=7)
    res = feature_fid(small, write_folder(tmp_path / "ref", small), encoder=tiny_model)
    assert abs(res["fid"]) < 1e-4 and "to 64x64 with toklip's eval transform" in res["resize"]


# ------------------------------------------------------------------------------------------------ class consistency
def knows_colours(model, monkeypatch):
    """Image embedding = one-hot of the nearest PALETTE colour, text embedding = one-hot of the colour it names:
    an evaluation that keeps labels and classifier columns aligned scores exactly the fraction of right labels."""
    width = len(NAMES) + 2

    def encode_image(images, normalize=False):
        rgb = ((images.float().mean(dim=(2, 3)) + 1) * 127.5).double().cpu()
        out = F.one_hot(torch.cdist(rgb, PALETTE).argmin(1), width).float()
        return F.normalize(out, dim=-1) if normalize else out

    def tokenizer(texts):
        return torch.tensor([[next(i for i, c in enumerate(NAMES) if c in t)] for t in texts])

    def encode_text(ids, normalize=False):
        out = F.one_hot(ids[:, 0], width).float()
        return F.normalize(out, dim=-1) if normalize else out

    monkeypatch.setattr(model, "encode_image", encode_image)
    monkeypatch.setattr(model, "encode_text", encode_text)
    monkeypatch.setattr(model, "tokenizer", tokenizer)
    return model


def test_class_consistency_scores_the_conditioning_labels(tiny_model, monkeypatch):
    model = knows_colours(tiny_model, monkeypatch)
    truth = [0, 1, 2, 3, 0, 1, 2, 3, 1, 1]
    images = colour_images(truth, size=64).float() / 127.5 - 1
    res = class_consistency([images[:6], images[6:]], truth, model=model, class_names=NAMES,
                            templates=["a photo of a {}.", "a {} thing"])
    assert res["top1"] == 1.0 and res["n"] == 10 and res["classes"] == 4 and res["templates"] == 2
    labels = list(truth)
    labels[1], labels[8] = 2, 0  # two wrong conditioning labels: 8 / 10 right
    res = class_consistency(colour_images(truth, size=32), labels, model=model, class_names=NAMES, templates="{}")
    assert res["top1"] == pytest.approx(0.8)
    per = {c["label"]: (c["n"], c["top1"]) for c in res["per_class"]}
    assert per == {0: (3, pytest.approx(2 / 3)), 1: (2, 1.0), 2: (3, pytest.approx(2 / 3)), 3: (2, 1.0)}
    with pytest.raises(InputError, match="one label per image"):
        class_consistency(images, truth[:-1], model=model, class_names=NAMES, templates="{}")
    with pytest.raises(InputError, match=r"labels must lie in \[0, 4\)"):
        class_consistency(images, [4] * 10, model=model, class_names=NAMES, templates="{}")


# ------------------------------------------------------------------------------------------------ input checks
def test_missing_inception_weights_say_what_to_pass_and_where_to_get_it(tmp_path):
    folder = write_folder(tmp_path / "ref", noise_images(4))
    for weights in (None, tmp_path / "nope.pth"):
        with pytest.raises(ConfigError, match="--inception-weights PATH") as e:
            inception_fid_is(noise_images(4), folder, inception_weights=weights)
        assert "pt_inception-2015-12-05" in str(e.value) and "torch-fidelity" in str(e.value)


def test_samples_are_not_drawn_before_the_reference_is_checked(tmp_path):
    drawn = []

    def sampler():
        drawn.append(1)
        yield noise_images(4)

    with pytest.raises(InputError, match="does not exist"):
        inception_fid_is(sampler(), tmp_path / "no-such-reference", feature=ChannelMeans())
    with pytest.raises(ConfigError, match="--inception-weights PATH"):
        inception_fid_is(sampler(), tmp_path, inception_weights=None)
    assert drawn == []


def test_bad_inputs_get_clear_errors(tmp_path):
    net = ChannelMeans()
    folder = write_folder(tmp_path / "ref", noise_images(4))
    with pytest.raises(InputError, match="at least 2 samples"):
        inception_fid_is(noise_images(1), folder, feature=net)
    with pytest.raises(InputError, match="at least 2 samples"):
        inception_fid_is(noise_images(4), folder, feature=net, n=1)
    with pytest.raises(InputError, match="only 4"):
        inception_fid_is(noise_images(4), folder, feature=net, n=5)
    with pytest.raises(InputError, match="every image must have one size"):
        inception_fid_is([noise_images(2), noise_images(2, size=16)], folder, feature=net)
    with pytest.raises(InputError, match=r"expected images \[B, 3, H, W\]"):
        inception_fid_is(torch.zeros(2, 1, 8, 8), folder, feature=net)
    with pytest.raises(InputError, match="sample_size=8"):
        inception_fid_is(noise_images(4, size=16), folder, feature=net)
    resized = inception_fid_is(noise_images(4, size=16), folder, feature=net, sample_size=8)
    assert math.isfinite(resized["fid"]) and "bicubic to 8x8" in resized["sample_resize"]
    flat = inception_fid_is(torch.zeros(4, 3, 16, 16), folder, feature=net, sample_size=8)  # floats: 0 -> 128
    ref = net(noise_images(4))[0]  # samples all 128: FID = |mu_ref - 128|^2 + tr(S_ref)
    assert flat["fid"] == pytest.approx(float(((ref.mean(0) - 128) ** 2).sum() + torch.cov(ref.T).trace()), rel=1e-9)
    with pytest.raises(InputError, match=r"in \[-1, 1\]"):
        inception_fid_is(torch.full((2, 3, 8, 8), 255.0), folder, feature=net)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="contains no images"):
        inception_fid_is(noise_images(4), tmp_path / "empty", feature=net)
    with pytest.raises(InputError, match="does not exist"):
        inception_fid_is(noise_images(4), tmp_path / "missing", feature=net)
    mixed = write_folder(tmp_path / "mixed", noise_images(2))
    Image.new("RGB", (12, 10), (1, 2, 3)).save(mixed / "z.png")
    with pytest.raises(InputError, match="pass crop=SIZE"):
        inception_fid_is(noise_images(4), mixed, feature=net)
    cropped = inception_fid_is(noise_images(4), mixed, feature=net, crop=8)
    assert cropped["reference"]["n"] == 3
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        inception_fid_is(noise_images(4), tmp_path / "bad.npz", feature=net)


# ------------------------------------------------------------------------------------------------ real Inception
@pytest.mark.slow
def test_inception_fid_is_with_a_random_weight_inception_file(tmp_path):
    pytest.importorskip("torch_fidelity")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    state = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                            num_classes=1008).state_dict()
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, weights)
    real = noise_images(4, size=32, seed=8, lo=0, hi=255)
    folder = write_folder(tmp_path / "ref", real)
    res = inception_fid_is(real, folder, inception_weights=weights, splits=2, device="cpu")
    assert res["feature_dim"] == 2048 and math.isfinite(res["fid"]) and math.isfinite(res["is"])
    assert "FrechetInceptionDistance" in res["evaluator"] and "feature 2048" in res["evaluator"]
    assert "299" in res["resize"] and res["weights"]["sha256"] and res["is_splits"] == 2
    other = inception_fid_is(noise_images(4, size=32, seed=9, lo=0, hi=100), folder, inception_weights=weights,
                             splits=2, device="cpu")
    # random weights keep pool features near 1e-8, so compare the two distances, not an absolute size
    assert other["fid"] > 1e3 * abs(res["fid"]) and other["n"] == 4
