import pytest
import torch

from maskgit_cli import metrics


def test_identical_images_are_perfect():
    x = torch.rand(2, 3, 16, 16)
    assert (metrics.psnr(x, x) >= 99).all()
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2), atol=1e-5)
    assert (metrics.l1(x, x) == 0).all()


def test_known_psnr_and_l1():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.1)
    assert metrics.psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert metrics.l1(a, b).item() == pytest.approx(0.1)


def test_masked_region_only_counts_the_hole():
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[..., :4, :] = 0.5  # error only in the top half
    hole_top = torch.zeros(1, 8, 8, dtype=torch.bool)
    hole_top[:, :4] = True
    assert metrics.l1(a, b, hole_top).item() == pytest.approx(0.5)
    assert metrics.l1(a, b, ~hole_top).item() == 0
    assert metrics.l1(a, b).item() == pytest.approx(0.25)


def test_ssim_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert metrics.ssim(x, noisy).item() < 0.9
