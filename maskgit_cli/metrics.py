"""Pixel metrics of images in [0, 1], (B, 3, H, W): PSNR, SSIM and L1, over the whole image or
over a region (the inpainted hole), one value per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _region(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool or None -> float weights (B, 1, H, W)."""
    if mask is None:
        return torch.ones_like(like[:, :1])
    return mask.to(like.device).float().unsqueeze(1)


def _mean_over(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted mean per image of x (B, C, H, W) under w (B, 1, H, W); NaN where w is empty."""
    w = w.expand_as(x)
    return (x * w).flatten(1).sum(1) / w.flatten(1).sum(1)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    mse = _mean_over((a.float() - b.float()) ** 2, _region(mask, a))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _mean_over((a.float() - b.float()).abs(), _region(mask, a))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004; 11x11 Gaussian, sigma 1.5, K1 0.01, K2 0.03), per pixel (B, C, H, W),
    with reflect padding so the map covers every pixel."""
    C = a.shape[1]
    w = _gaussian().to(a.device).expand(C, 1, 11, 11)

    def blur(x):
        return F.conv2d(F.pad(x, (5, 5, 5, 5), mode="reflect"), w, groups=C)

    a, b = a.float(), b.float()
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return _mean_over(ssim_map(a, b), _region(mask, a))


def all_metrics(
    pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image PSNR / SSIM / L1 over the whole image and over the hole."""
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "l1": l1(pred, target),
        "psnr_masked": psnr(pred, target, hole),
        "ssim_masked": ssim(pred, target, hole),
        "l1_masked": l1(pred, target, hole),
    }
