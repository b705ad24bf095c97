import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES, TinyFeatures, invoke_json

from maskgit_cli import fid, inception, pipeline
from maskgit_cli.errors import WeightsNotFound

FIX = FIXTURES / "fid"


def _random_cov(d, rng, n=None):
    x = rng.standard_normal((n or 2 * d, d))
    return np.cov(x, rowvar=False)


def test_identical_sets_give_zero():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((300, 16))
    s = fid.Stats.of(f)
    assert abs(fid.frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-8


def test_equal_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(1)
    sigma = _random_cov(32, rng)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    assert fid.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(
        float(((mu1 - mu2) ** 2).sum()), rel=1e-8
    )


@pytest.mark.parametrize("d,n", [(64, 500), (256, 100)])  # full rank and rank-deficient
def test_agrees_with_the_scipy_sqrtm_formula(d, n):
    rng = np.random.default_rng(d)
    s1, s2 = _random_cov(d, rng, n), _random_cov(d, rng, n) * 1.3
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    ref = fid.frechet_distance_scipy(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize(
    "n", [500, 40]
)  # Cholesky path; singular covariance -> eigendecomposition path
def test_psd_factor_reproduces_the_covariance(n):
    s = _random_cov(64, np.random.default_rng(n), n)
    w = fid._psd_factor(s)
    assert np.allclose(w @ w.T, s, atol=1e-10)


def test_state_dict_matches_the_real_file_layout():
    ref = json.loads((FIX / "pt_inception_state_dict_shapes.json").read_text())
    sd = inception.FIDInception().state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == ref


def test_kid_of_identical_sets_is_near_zero_and_grows_with_shift():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((400, 16))
    g = rng.standard_normal((400, 16))
    same, _, m = fid.kid(f, f, num_subsets=10, subset_size=150)
    close, _, _ = fid.kid(f, g, num_subsets=10, subset_size=150)
    far, _, _ = fid.kid(f, g + 1.0, num_subsets=10, subset_size=150)
    # unbiased estimates scatter around 0 for equal distributions, far below a real shift
    assert m == 150 and far > 0 and abs(same) < 0.05 * far and abs(close) < 0.05 * far


def test_kid_subsets_are_never_the_whole_set():
    """At N = 500 vs 500 a subset of 1000 (or of N) is the whole set every time and the std is 0;
    subsets are N // 2 then, and the std says something."""
    rng = np.random.default_rng(0)
    f, g = rng.standard_normal((500, 16)), rng.standard_normal((500, 16)) + 0.3
    mean, std, m = fid.kid(f, g)
    assert m == 250 and std > 0.01 * abs(mean)
    assert fid.kid_subset_size(5000, 2500) == 1000 and fid.kid_subset_size(1999, 3000) == 999


def test_clear_error_without_weights(tiny_data):
    with pytest.raises(
        WeightsNotFound, match="make fid-weights.*--inception-weights.*MASKGIT_INCEPTION_WEIGHTS"
    ):
        pipeline.fid(tiny_data["test"], tiny_data["val"], device="cpu")


def test_fid_on_folders_and_npz_round_trip(tiny_data, tmp_path):
    feat = TinyFeatures(8)
    r = pipeline.fid(
        tiny_data["test"],
        tiny_data["test"],
        dims=64,
        device="cpu",
        feature_fn=_as_dims(feat, 64),
        save_stats=tmp_path / "a.npz",
    )
    # rank-deficient (10 images, 64 dims): float noise on the null space stays tiny
    assert abs(r.fid) < 1e-3 and r.count_a == 10 and r.warnings  # N < dims is flagged
    r2 = pipeline.fid(
        tmp_path / "a.npz", tiny_data["val"], dims=64, device="cpu", feature_fn=_as_dims(feat, 64)
    )
    r3 = pipeline.fid(
        tiny_data["test"], tiny_data["val"], dims=64, device="cpu", feature_fn=_as_dims(feat, 64)
    )
    assert r2.fid == pytest.approx(r3.fid) and r2.fid > 0 and r2.kid == pytest.approx(r3.kid)
    assert (
        r3.kid_subset_size == 5
        and r3.kid_std > 0
        and any("KID over 100 subsets of 5" in w for w in r3.warnings)
    )
    # pytorch-fid's own .npz (mu, sigma only) works for FID; KID then needs features and is null
    s = fid.Stats.load(tmp_path / "a.npz")
    np.savez(tmp_path / "ptfid.npz", mu=s.mu, sigma=s.sigma)
    r4 = pipeline.fid(tmp_path / "ptfid.npz", tmp_path / "a.npz", dims=64, device="cpu")
    assert abs(r4.fid) < 1e-3 and r4.kid is None and r4.kid_subset_size is None


def _as_dims(feat, dims):
    """Pad the tiny extractor's output to `dims` features with a fixed projection."""
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(feat.proj.shape[1], dims, generator=g)
    return lambda x: feat(x) @ proj


def test_cli_fid_json_on_npz(runner, tmp_path):
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0.0), ("b", 0.5)):
        f = rng.standard_normal((300, 64)) + shift
        np.savez(tmp_path / f"{name}.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    out = invoke_json(
        runner, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--dims", "64"]
    )
    for key in ("fid", "kid", "count_a", "count_b", "dims", "seconds"):
        assert key in out
    a, b = fid.Stats.load(tmp_path / "a.npz"), fid.Stats.load(tmp_path / "b.npz")
    assert (
        out["fid"] == pytest.approx(fid.frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
        and out["dims"] == 64
    )
    assert out["fid"] > 64 * 0.25  # at least the squared mean shift
    assert out["kid"] is None  # pytorch-fid statistics carry no features


def test_cli_fid_without_weights_exits_1(runner, tiny_data):
    from maskgit_cli.cli import app

    r = runner.invoke(app, ["fid", str(tiny_data["test"]), str(tiny_data["val"])])
    assert r.exit_code == 1 and "--inception-weights" in r.output and "Traceback" not in r.output


def test_kid_does_not_depend_on_which_set_comes_first():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 16)), rng.standard_normal((200, 16)) + 0.3
    assert fid.kid(a, b) == fid.kid(b, a)


def test_fid_from_features_equals_fid_from_the_covariance():
    """Given the N < d features behind a covariance, the N x N path gives the same distance (to
    1e-6: the d x d path factors a rank-deficient covariance by eigh, which rounds)."""
    rng = np.random.default_rng(1)
    f1 = rng.standard_normal((60, 128)) @ rng.standard_normal((128, 128))
    f2 = f1[:50] * 1.2 + 0.5
    s1, s2 = fid.Stats.of(f1), fid.Stats.of(f2)
    slow = fid.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    assert fid.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, f1) == pytest.approx(
        slow, rel=1e-6
    )
    assert fid.compare(s1, s2, 128).fid == pytest.approx(slow, rel=1e-6)


def test_kid_flags_and_a_symmetric_cli(runner, tmp_path):
    rng = np.random.default_rng(2)
    for name, shift in (("a", 0.0), ("b", 0.4)):
        f = rng.standard_normal((400, 64)) + shift
        fid.Stats.of(f).write(tmp_path / f"{name}.npz")
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    kid = ["--dims", "64", "--kid-subsets", "20", "--kid-subset-size", "50", "--kid-seed", "3"]
    ab = invoke_json(runner, ["fid", a, b, *kid])
    ba = invoke_json(runner, ["fid", b, a, *kid])
    assert ab["kid"] == ba["kid"] and ab["kid_subsets"] == 20 and ab["kid_subset_size"] == 50
    assert ab["fid"] == pytest.approx(ba["fid"], rel=1e-9)
