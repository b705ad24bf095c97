"""Seconds for FID-Inception statistics of 500 images and for the Frechet step at 2048 dims,
ours (symmetric eigendecompositions) against scipy.linalg.sqrtm in the same run."""

import time

from common import SHARED, emit, machine

import numpy as np
import torch

from maskgit_cli import data, fid


def main() -> dict:
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

    model = fid.FIDInception(2048).eval()  # random weights: speed does not depend on them
    paths = data.list_images(SHARED / "data" / "cats64" / "test" / "images")[:500]
    images = data.load_images(paths, 64).float() / 255
    t = time.perf_counter()
    stats = fid.Stats.of(fid.features(images, model, batch_size=50))
    stats_s = time.perf_counter() - t
    return {"benchmark": "fid", **machine(), "frechet_seconds": ours_s, "scipy_sqrtm_seconds": scipy_s,
            "speedup": scipy_s / ours_s, "relative_difference": abs(ours - ref) / abs(ref),
            "statistics_500_images_seconds": stats_s, "images": stats.count}


if __name__ == "__main__":
    emit(main())
