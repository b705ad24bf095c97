"""FID: reproduce pytorch-fid's figure with the real weights, and time the pieces.

- `reference` (needs `--data`, a cats64 folder): FID between its test/images and test/masked
  through the same path users take (`pipeline.fid` with the weights `maskgit fid-weights` stored),
  against pytorch-fid 0.3.0's 54.48268 with the same weights (tests/fixtures/README.md); must
  agree within 1e-3 relative.
- the Frechet step at 2048 dims, ours against scipy.linalg.sqrtm in the same run;
- one resample of `--bootstrap` at 500 images and 2048 dims (the Gram path) against the FID of the
  same drawn features through the d x d covariances;
- FID-Inception statistics of 500 images (cats64 test images with `--data`, else 500 synthetic
  64x64 images: the network's cost does not depend on the content).

Run `make fid-weights` first. `--quick` skips the reference FID (about 4 minutes on 2 cores)."""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, machine

from maskgit_cli import bootstrap, data, fid, fid_weights, pipeline

PYTORCH_FID = 54.48268


def main(data_dir: Path | None, quick: bool = False) -> dict:
    out: dict = {"benchmark": "fid", **machine()}
    if data_dir is None:
        out["reference_skipped"] = (
            "no --data (a cats64 folder): pytorch-fid's figure is for its test split"
        )
    elif not quick:
        test = data_dir / "test"
        r = pipeline.fid(test / "images", test / "masked", device="cpu")
        rel = abs(r.fid - PYTORCH_FID) / PYTORCH_FID
        out.update(
            {
                "reference_fid": r.fid,
                "pytorch_fid": PYTORCH_FID,
                "relative_difference_to_pytorch_fid": rel,
                "reference_ok": rel < 1e-3,
                "reference_seconds": r.seconds,
                "kid": r.kid,
                "kid_std": r.kid_std,
                "kid_subset_size": r.kid_subset_size,
            }
        )

    rng = np.random.default_rng(0)
    feats1 = rng.standard_normal((3000, 2048)) @ (rng.standard_normal((2048, 2048)) * 0.05)
    feats2 = feats1[:2500] * 1.1 + 0.1
    s1, s2 = fid.Stats.of(feats1), fid.Stats.of(feats2)
    t = time.perf_counter()
    ours = fid.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = fid.frechet_distance_scipy(s1.mu, s1.sigma, s2.mu, s2.sigma)
    scipy_s = time.perf_counter() - t

    # one bootstrap resample of 500 images at 2048 dims: the N x N Gram path against the FID of
    # the drawn features' d x d covariances
    b1, b2 = feats1[:500], feats2[:500]
    resamples = 10
    t = time.perf_counter()
    fids = bootstrap.resampled_fids(b2, [b1], resamples, seed=0)
    gram_s = (time.perf_counter() - t) / resamples
    idx = np.random.default_rng(0).integers(0, 500, 500)
    t = time.perf_counter()
    x, y = fid.Stats.of(b1[idx]), fid.Stats.of(b2[idx])
    dxd = fid.frechet_distance(x.mu, x.sigma, y.mu, y.sigma)
    dxd_s = time.perf_counter() - t

    model = fid_weights.load_inception(2048)
    if data_dir is not None:
        paths = data.list_images(data_dir / "test" / "images")[:500]
        images = data.load_images(paths, 64).float() / 255
    else:
        images = torch.rand(500, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    stats = fid.Stats.of(fid.features(images, model, batch_size=50))
    stats_s = time.perf_counter() - t
    out.update(
        {
            "frechet_seconds": ours_s,
            "scipy_sqrtm_seconds": scipy_s,
            "speedup": scipy_s / ours_s,
            "relative_difference": abs(ours - ref) / abs(ref),
            "statistics_500_images_seconds": stats_s,
            "bootstrap_resample_seconds": gram_s,
            "bootstrap_resample_dxd_seconds": dxd_s,
            "bootstrap_relative_difference": abs(fids[0, 0] - dxd) / dxd,
            "images": stats.count,
        }
    )
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=None, help="a cats64 folder (with test/images, test/masked)"
    )
    ap.add_argument("--quick", action="store_true", help="skip the reference FID")
    args = ap.parse_args()
    emit(main(args.data, args.quick))
