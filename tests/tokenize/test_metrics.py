"""toklip.metrics against values computed by hand (PSNR, SSIM of constant images, codebook statistics of a
known histogram) and against an independent Frechet distance (numpy + scipy) on a small deterministic network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchmetrics", reason="metrics need the eval extra: pip install 'toklip[eval]'")

from toklip.metrics import FIDMetric, LPIPSMetric, code_counts, codebook_stats, psnr, ssim, to_unit_range
from toklip.core.errors import CheckpointError, ConfigError
from toklip.metrics.perceptual import MetricUnavailable


def test_psnr_of_a_known_error():
    target = torch.zeros(2, 3, 8, 8)
    assert torch.allclose(psnr(target + 0.1, target), torch.tensor([20.0, 20.0]))  # MSE 0.01 -> 20 dB
    noisy = target.clone()
    noisy[1, 0, 0, 0] = 1.0  # one pixel of 192 off by 1: MSE = 1/192
    assert math.isclose(float(psnr(noisy, target)[1]), 10 * math.log10(192), rel_tol=1e-6)


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.25)
    c1 = 0.01**2  # (K1 * data_range)^2; the contrast-structure term is 1 for zero variances
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert math.isclose(float(ssim(a, b)[0]), expected, rel_tol=1e-5)
    assert math.isclose(float(ssim(a, a)[0]), 1.0, rel_tol=1e-6)


def test_to_unit_range_rounds_like_a_saved_png():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 4)
    assert (to_unit_range(x).flatten() * 255).round().tolist() == [0.0, 128.0, 255.0, 255.0]


def test_codebook_stats_of_a_known_histogram():
    counts = code_counts(np.array([[0, 0, 1, 1], [2, 2, 3, 3]]), vocab_size=8)
    assert counts.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    s = codebook_stats(counts)
    assert (s["used"], s["tokens"], s["usage"]) == (4, 8, 0.5)
    assert math.isclose(s["entropy_bits"], 2.0) and math.isclose(s["perplexity"], 4.0)
    skew = codebook_stats(np.array([3, 1]))  # p = 3/4, 1/4
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert math.isclose(skew["entropy_bits"], h) and math.isclose(skew["perplexity"], 2**h)
    assert codebook_stats(np.array([5, 0, 0]))["perplexity"] == 1.0
    with pytest.raises(ValueError, match="outside a codebook"):
        code_counts(torch.tensor([9]), vocab_size=8)


class ChannelStats(nn.Module):
    """Deterministic features: per-channel mean, std and max of [0, 1] images (a custom extractor gets them as is)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), x.amax((2, 3))], dim=1)


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_with_a_small_deterministic_network_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(24, 3, 16, 16, generator=g)
    fake = (real * 0.7 + 0.2 * torch.rand(24, 3, 16, 16, generator=g)).clamp(0, 1)
    net = ChannelStats()
    metric = FIDMetric(feature=net)
    metric.update(real, fake)
    expected = frechet(net(real).numpy(), net(fake).numpy())
    assert expected > 0.01
    assert math.isclose(metric.compute(), expected, rel_tol=1e-3)
    same = FIDMetric(feature=net)
    same.update(real, real)
    assert abs(same.compute()) < 1e-6


def test_fid_and_lpips_without_weights_say_what_to_pass(tmp_path):
    with pytest.raises(MetricUnavailable, match="--inception-weights"):
        FIDMetric()
    with pytest.raises(MetricUnavailable, match="--lpips-weights"):
        LPIPSMetric(None)
    with pytest.raises(MetricUnavailable, match="does not exist"):
        LPIPSMetric(tmp_path / "nope.pth")


def test_lpips_loads_a_torchvision_backbone_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    metric = LPIPSMetric(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    metric.update(x, x)
    assert metric.compute() == 0.0
    other = LPIPSMetric(path)
    other.update(x, x.flip(-1))
    assert other.compute() > 0


def test_eval_recon_compares_vqs_on_the_same_images(tmp_path):
    from click.testing import CliRunner

    from toklip.cli.main import cli

    from .conftest import make_class_folders

    src = make_class_folders(tmp_path / "in", per_class=2)
    res = CliRunner().invoke(cli, ["eval", "recon", str(src), "--vq", "llamagen-test", "--vq", "llamagen-test",
                                   "--seed", "0", "--image-size", "32", "--device", "cpu", "--png",
                                   str(tmp_path / "ex.png"), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "PSNR dB" in res.output and "pass --inception-weights" in res.output
    import json

    r = json.loads((tmp_path / "r.json").read_text())
    a, b = r["rows"]
    assert r["images"] == 4 and a["psnr_db"] == b["psnr_db"] and a["rfid"] is None
    assert 0 < a["used"] <= 4 * 16 and 0 < a["ssim"] <= 1
    from PIL import Image

    assert Image.open(tmp_path / "ex.png").size == (3 * 32, 4 * 32)  # original + two reconstructions, 4 rows


def fid_inception_state() -> dict:
    """A random-weight FID InceptionV3 state dict in the release files' layout (torchvision's inception_v3 with
    the 1008-way TF classifier, no aux head): what torch-fidelity and pytorch-fid ship, minus the trained values."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                           num_classes=1008).state_dict()


@pytest.mark.slow
def test_fid_loads_inception_weights_from_a_file_in_the_release_format(tmp_path):
    pytest.importorskip("torch_fidelity", reason="rFID needs torch-fidelity: pip install 'toklip[eval]'")
    state = fid_inception_state()
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    metric = FIDMetric(path)
    loaded = metric.fid.inception.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in ("fc.weight", "Conv2d_1a_3x3.conv.weight"))
    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 64, 64, generator=g)
    metric.update(real, (real + 0.3 * torch.rand(4, 3, 64, 64, generator=g)).clamp(0, 1))
    assert math.isfinite(metric.compute()) and metric.compute() > 0
    same = FIDMetric(path)
    same.update(real, real)
    assert abs(same.compute()) < 1e-3


def test_fid_weights_are_read_safely_and_checked(tmp_path):
    import os

    class Hostile:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    pytest.importorskip("torch_fidelity", reason="rFID needs torch-fidelity: pip install 'toklip[eval]'")
    hostile = tmp_path / "hostile.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": Hostile()}, hostile)
    with pytest.raises(CheckpointError, match="refused to load .*mkdir"):
        FIDMetric(hostile)
    assert not (tmp_path / "pwned").exists()
    wrong = tmp_path / "alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, wrong)
    with pytest.raises(ConfigError, match="not an FID InceptionV3 state dict"):
        FIDMetric(wrong)
