"""FID and KID (pytorch-fid's convention) from FID-Inception features (`inception.py`).

Statistics are float64. The Frechet distance uses tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2
sqrt(S1)))
with symmetric eigendecompositions: no complex matrix square root, no imaginary residue to drop.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskgit_cli.errors import DataError
from maskgit_cli.outputs import npz_signature

is_stats_file = npz_signature("mu", "sigma", "count")  # statistics maskgit wrote


# ------------------------------------------------------------------------------ statistics

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # x (B, 3, H, W) in [0, 1] -> (B, D)


@torch.no_grad()
def features(
    images01: torch.Tensor | list[torch.Tensor],
    extractor: FeatureFn,
    batch_size: int = 50,
    device="cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(N, D) float64 features of images in [0, 1]."""
    out = []
    n = len(images01)
    for i in range(0, n, batch_size):
        x = images01[i : i + batch_size]
        x = torch.stack(list(x)) if isinstance(x, list) else x
        out.append(extractor(x.to(device).float()).double().cpu().numpy())
        if on_progress:
            on_progress(min(i + batch_size, n), n)
    return np.concatenate(out)


def load_float_images(folder: str | Path | list[Path]) -> list[torch.Tensor]:
    """A folder's images (or these files) as RGB float in [0, 1] at their own size; a set of
    mixed sizes is resized to 299 now (bilinear, as the network would)."""
    from maskgit_cli import data

    paths = folder if isinstance(folder, list) else data.list_images(folder)
    out = [torch.from_numpy(data.read_rgb(p)).permute(2, 0, 1).float() / 255 for p in paths]
    if len({tuple(t.shape) for t in out}) > 1:
        out = [
            F.interpolate(t[None], size=(299, 299), mode="bilinear", align_corners=False)[0]
            for t in out
        ]
    return out


def statistics(
    source: str | Path,
    extractor: Callable[[], FeatureFn],
    batch_size: int,
    device,
    on_progress: Callable[[int, int], None] | None = None,
) -> Stats:
    """Statistics of an image folder (features kept, for KID) or of a saved .npz. `extractor` is
    called only when a folder needs features (loading FID-Inception takes a while)."""
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return Stats.load(source)
    if not source.exists():
        raise DataError(f"not found: {source} (give an image folder or a .npz of statistics)")
    if source.is_file():
        raise DataError(f"{source}: neither an image folder nor a .npz of statistics")
    from maskgit_cli import data

    paths = data.list_images(source)
    images = load_float_images(paths)
    if len(images) < 2:
        raise DataError(
            f"{source}: FID needs at least 2 images per set (the covariance of one image is "
            "undefined); add images"
        )
    stats = Stats.of(features(images, extractor(), batch_size, device, on_progress))
    stats.names = [p.stem for p in paths]
    return stats


@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None  # kept for KID when available
    names: list[str] | None = None  # the images' stems, row by row of `features`, when known

    @classmethod
    def of(cls, feats: np.ndarray) -> Stats:
        feats = np.asarray(feats, dtype=np.float64)
        return cls(
            mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), count=len(feats), features=feats
        )

    def write(self, path: Path) -> None:
        """Write to `path` as it is (callers make the write atomic): mu, sigma, count, features
        and the images' names when known."""
        with open(path, "wb") as fh:
            extra = {"features": self.features} if self.features is not None else {}
            if self.features is not None and self.names:
                extra["names"] = np.array(self.names, dtype=str)
            np.savez(
                fh,
                mu=self.mu,
                sigma=self.sigma,
                count=np.array(self.count),
                written_by=np.array("maskgit"),
                **extra,
            )

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        """Statistics from a .npz (ours, or pytorch-fid's mu / sigma), checked: sigma must be a
        covariance (symmetric, positive semi-definite) and features, if any, of mu's width."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
                feats = z["features"].astype(np.float64) if "features" in z else None
                names = [str(n) for n in z["names"]] if "names" in z else None
                count = (
                    int(z["count"]) if "count" in z else (len(feats) if feats is not None else -1)
                )
        except KeyError:
            raise DataError(
                f"{path}: statistics need 'mu' and 'sigma' (as pytorch-fid saves them)"
            ) from None
        except Exception as err:
            raise DataError(f"{path}: cannot read statistics ({err.__class__.__name__})") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise DataError(
                f"{path}: statistics hold NaN or infinite values (from fewer than 2 images?); "
                "recompute them"
            )
        if not is_covariance(sigma):
            raise DataError(
                f"{path}: sigma is not a covariance matrix (not symmetric positive semi-definite); "
                "the file is damaged or not FID statistics: recompute them"
            )
        if feats is not None and (
            feats.ndim != 2 or feats.shape[1] != len(mu) or not np.isfinite(feats).all()
        ):
            raise DataError(
                f"{path}: its features {feats.shape} do not fit mu ({len(mu)} dims); the file is "
                "damaged: recompute the statistics"
            )
        if names is not None and (feats is None or len(names) != len(feats)):
            names = None  # names without their rows say nothing about pairing
        return cls(mu=mu, sigma=sigma, count=count, features=feats, names=names)


def is_covariance(s: np.ndarray) -> bool:
    """Symmetric and positive semi-definite up to rounding: a Cholesky factorization exists after
    a jitter of 1e-6 of the mean variance (which any real covariance, even a rank-deficient one
    from fewer images than dims, passes, and an indefinite matrix fails)."""
    scale = float(np.abs(s).max()) or 1.0
    if np.abs(s - s.T).max() > 1e-6 * scale or (np.diag(s) < 0).any():
        return False
    jitter = 1e-6 * max(float(np.trace(s)) / len(s), 1e-12)
    try:
        np.linalg.cholesky((s + s.T) / 2 + jitter * np.eye(len(s)))
        return True
    except np.linalg.LinAlgError:
        return False


def _psd_factor(s: np.ndarray) -> np.ndarray:
    """W with W W^T = s: Cholesky when s is positive definite (n^3 / 3 flops), else from the
    symmetric eigendecomposition (rank-deficient covariances, N <= dims)."""
    try:
        return np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(s)
        return v * np.sqrt(np.clip(w, 0, None))


def frechet_distance(mu1, sigma1, mu2, sigma2, features1: np.ndarray | None = None) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), all float64.

    With S1 = W W^T, the symmetric PSD matrix W^T S2 W is similar to S1 S2 (W^T S2 W =
    W^-1 (S1 S2) W when W is invertible, and has the same nonzero eigenvalues otherwise), so
    tr sqrt(S1 S2) is the sum of the square roots of its eigenvalues. W comes from Cholesky when S1
    is positive definite, from S1's eigendecomposition when it is singular, or, given the N
    features behind S1, is the centred features themselves (d x N, W W^T = S1 exactly): then
    W^T S2 W is only N x N, the fast path for N < d. No complex matrix square root."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise DataError(
            f"statistics of different sizes ({mu1.shape[0]} vs {mu2.shape[0]} dims): "
            "compute both with the same feature size"
        )
    if features1 is not None and 1 < len(features1) <= len(mu1):
        f = np.asarray(features1, np.float64)
        w = (f - f.mean(0)).T / np.sqrt(len(f) - 1)
    else:
        w = _psd_factor((s1 + s1.T) / 2)
    m = w.T @ s2 @ w
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(value, 0.0)  # a distance: identical statistics give 0, not a residue like -3e-13


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


def kid(
    f1: np.ndarray,
    f2: np.ndarray,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial
    kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets of m images drawn without
    replacement from each set. Returns (mean, std over subsets, m). The mean is unbiased at any m;
    the std is that of an m-image estimate, so compare it only at equal m. The two sets are drawn
    from in a fixed order whichever comes first, so KID(A, B) = KID(B, A)."""
    if (len(f2), float(np.sum(f2))) < (len(f1), float(np.sum(f1))):
        f1, f2 = f2, f1
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
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (
            m * (m - 1)
        ) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals)), m


def distance(a: Stats, b: Stats) -> float:
    """The Frechet distance of two statistics. FID is symmetric: the side whose features (N <=
    dims) give the smallest system is factored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = sorted(
            (x for x in (a, b) if x.features is not None and len(x.features) <= len(x.mu)),
            key=lambda x: len(x.features),
        )
        one = fast[0] if fast else a
        other = b if one is a else a
        return frechet_distance(
            one.mu, one.sigma, other.mu, other.sigma, one.features if fast else None
        )


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
    fid_se_images: float | None = None  # the bootstrap over images (bootstrap.py), when asked
    bootstrap_resamples: int = 0
    bootstrap_paired: bool | None = None  # both sets held the same images, drawn together
    fid_versus: float | None = None  # FID(--versus, B), a second fill of A's images
    fid_difference: float | None = None  # fid - fid_versus
    fid_difference_se_images: float | None = None  # its bootstrap standard error over images


def compare(
    a: Stats,
    b: Stats,
    dims: int,
    seconds_so_far: float = 0.0,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_seed: int = 0,
) -> FidResult:
    """FID (and KID when both sets kept their features) of two statistics."""
    t0 = time.time()
    notes = []
    smallest = min(n for n in (a.count, b.count) if n > 0) if max(a.count, b.count) > 0 else -1
    if 0 < smallest < dims:
        notes.append(
            f"{smallest} images < {dims} dims: covariances are rank-deficient and FID is biased "
            "upward; compare only at equal N"
        )
    value = distance(a, b)
    k = ks = m = None
    if a.features is not None and b.features is not None:
        k, ks, m = kid(a.features, b.features, kid_subsets, kid_subset_size, kid_seed)
        if m < kid_subset_size:
            notes.append(
                f"KID over {kid_subsets} subsets of {m} images (a subset of {kid_subset_size} "
                f"needs {2 * kid_subset_size} per set); compare kid_std only at equal subset size"
            )
    return FidResult(
        fid=value,
        kid=k,
        kid_std=ks,
        kid_subset_size=m,
        kid_subsets=kid_subsets if m else None,
        count_a=a.count,
        count_b=b.count,
        dims=dims,
        seconds=seconds_so_far + time.time() - t0,
        warnings=notes,
    )
