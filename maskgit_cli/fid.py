"""FID and KID with pytorch-fid's FID-Inception, in pure torch (no torchvision).

The network is the TF-Inception-v3 port pytorch-fid uses (Heusel et al. 2017): 1008 classes,
FID-specific A/C/E blocks (average pools that exclude padding, a max pool in the last block).
Its state_dict keys equal those of `pt_inception-2015-12-05-6726825d.pth`, so the real file loads
strictly; `fid_weights.py` finds, converts and verifies the weights. Preprocessing as pytorch-fid: RGB in [0, 1] -> bilinear resize to 299 (align_corners
False) -> [-1, 1]. Features: 64 / 192 / 768 (earlier blocks, average-pooled) or 2048 (pool3).

Statistics are float64. The Frechet distance uses tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))
with symmetric eigendecompositions: no complex matrix square root, no imaginary residue to drop.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from maskgit_cli.errors import DataError

DIMS = {64: 0, 192: 1, 768: 2, 2048: 3}  # feature size -> last block run


class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for m in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # pytorch-fid: Mixed_7b average-pools, Mixed_7c max-pools
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """x (B, 3, H, W) RGB in [0, 1] -> features (B, dims) float."""

    def __init__(self, dims: int = 2048):
        super().__init__()
        if dims not in DIMS:
            raise DataError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
        self.dims = dims
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # unused for features; kept so the real file loads strictly
        self.classifier_present = True  # False when the weights came without one (fc = 0)

    def blocks(self) -> list[list[Callable]]:
        pool = lambda x: F.max_pool2d(x, 3, stride=2)  # noqa: E731
        return [
            [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, pool],
            [self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, pool],
            [self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
             self.Mixed_6d, self.Mixed_6e],
            [self.Mixed_7a, self.Mixed_7b, self.Mixed_7c],
        ]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the last block needed for `dims`, before pooling: (B, dims, h, w)."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for block in self.blocks()[: DIMS[self.dims] + 1]:
            for layer in block:
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1008) class logits. FID and KID never need them; weights converted from the
        TorchScript file have no classifier (fc = 0), and then these are meaningless."""
        if not self.classifier_present:
            warnings.warn("these FID-Inception weights have no classifier (fc is zero): the logits are "
                          "meaningless; FID and KID use pool3 features and are unaffected", stacklevel=2)
        dims, self.dims = self.dims, 2048
        try:
            return self.fc(self.forward(x))
        finally:
            self.dims = dims


# ------------------------------------------------------------------------------ statistics

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # x (B, 3, H, W) in [0, 1] -> (B, D)


@torch.no_grad()
def features(images01: torch.Tensor | list[torch.Tensor], extractor: FeatureFn, batch_size: int = 50,
             device="cpu", on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, D) float64 features of images in [0, 1]."""
    out = []
    n = len(images01)
    for i in range(0, n, batch_size):
        x = images01[i:i + batch_size]
        x = torch.stack(list(x)) if isinstance(x, list) else x
        out.append(extractor(x.to(device).float()).double().cpu().numpy())
        if on_progress:
            on_progress(min(i + batch_size, n), n)
    return np.concatenate(out)


@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None  # kept for KID when available

    @classmethod
    def of(cls, feats: np.ndarray) -> "Stats":
        feats = np.asarray(feats, dtype=np.float64)
        return cls(mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), count=len(feats), features=feats)

    def save(self, path: Path) -> None:
        from maskgit_cli.data import atomic_write

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                extra = {"features": self.features} if self.features is not None else {}
                np.savez(fh, mu=self.mu, sigma=self.sigma, count=np.array(self.count), **extra)
        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | Path) -> "Stats":
        path = Path(path)
        try:
            with np.load(path) as z:
                mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
                feats = z["features"] if "features" in z else None
                count = int(z["count"]) if "count" in z else (len(feats) if feats is not None else -1)
        except KeyError:
            raise DataError(f"{path}: statistics need 'mu' and 'sigma' (as pytorch-fid saves them)") from None
        except Exception as err:
            raise DataError(f"{path}: cannot read statistics ({err.__class__.__name__})") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise DataError(f"{path}: statistics hold NaN or infinite values (from fewer than 2 images?); "
                            "recompute them")
        return cls(mu=mu, sigma=sigma, count=count, features=feats)


def _psd_factor(s: np.ndarray) -> np.ndarray:
    """W with W W^T = s: Cholesky when s is positive definite (n^3 / 3 flops), else from the
    symmetric eigendecomposition (rank-deficient covariances, N <= dims)."""
    try:
        return np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(s)
        return v * np.sqrt(np.clip(w, 0, None))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), all float64.

    With S1 = W W^T, the symmetric PSD matrix W^T S2 W is similar to S1 S2 (W^T S2 W = W^-1 (S1 S2) W
    when W is invertible, and has the same nonzero eigenvalues otherwise), so tr sqrt(S1 S2) is the
    sum of the square roots of its eigenvalues. With W = V sqrt(L) from S1's eigendecomposition this
    is sqrt(S1) S2 sqrt(S1) in S1's eigenbasis; Cholesky gives the same spectrum cheaper. No complex
    matrix square root; eigenvectors only for a singular S1."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise DataError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}; use the same --dims")
    w = _psd_factor((s1 + s1.T) / 2)
    m = w.T @ s2 @ w
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_scipy(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's formula with scipy.linalg.sqrtm, for comparison and benchmarks."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


KID_SUBSET_SIZE = 1000  # torch-fidelity's and clean-fid's subset size
KID_SUBSETS = 100


def kid_subset_size(n1: int, n2: int, subset_size: int = KID_SUBSET_SIZE) -> int:
    """The usual subset size, but never a whole set: with m = N every subset is the same set and
    the std over subsets is 0 (it said nothing). Below 2 x subset_size, m = N // 2."""
    n = min(n1, n2)
    return subset_size if n >= 2 * subset_size else n // 2


def kid(f1: np.ndarray, f2: np.ndarray, num_subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float, int]:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial
    kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets of m images drawn without
    replacement from each set. Returns (mean, std over subsets, m). The mean is unbiased at any m;
    the std is that of an m-image estimate, so compare it only at equal m."""
    rng = np.random.default_rng(seed)
    d = f1.shape[1]
    m = kid_subset_size(len(f1), len(f2), subset_size)
    if m < 2:
        return float("nan"), float("nan"), m
    vals = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals)), m


@dataclass
class FidResult:
    fid: float
    kid: float | None
    kid_std: float | None
    kid_subset_size: int | None
    kid_subsets: int | None
    count_a: int
    count_b: int
    dims: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def compare(a: Stats, b: Stats, dims: int, seconds_so_far: float = 0.0) -> FidResult:
    t0 = time.time()
    notes = []
    smallest = min(n for n in (a.count, b.count) if n > 0) if max(a.count, b.count) > 0 else -1
    if 0 < smallest < dims:
        notes.append(f"{smallest} images < {dims} dims: covariances are rank-deficient and FID is biased "
                     "upward; compare only at equal N")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    k = ks = m = None
    if a.features is not None and b.features is not None:
        k, ks, m = kid(a.features, b.features)
        if m < KID_SUBSET_SIZE:
            notes.append(f"KID over {KID_SUBSETS} subsets of {m} images (the usual {KID_SUBSET_SIZE} needs "
                         f"{2 * KID_SUBSET_SIZE} per set); compare kid_std only at equal subset size")
    return FidResult(fid=value, kid=k, kid_std=ks, kid_subset_size=m, kid_subsets=KID_SUBSETS if m else None,
                     count_a=a.count, count_b=b.count, dims=dims,
                     seconds=seconds_so_far + time.time() - t0, warnings=notes)
