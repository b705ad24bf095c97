"""The bootstrap over images: exact resampled FIDs, pairing by name, known spreads, and the
--bootstrap flags of fid and compare-schedules."""

import numpy as np
import pytest
from conftest import TinyFeatures, invoke_json

from maskgit_cli import bootstrap, fid, pipeline
from maskgit_cli.errors import ConfigError


def _sets(n, d, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    fill = 0.8 * ref + 0.5 * rng.standard_normal((n, d)) + 0.1
    return ref, fill


@pytest.mark.parametrize("n,d", [(60, 128), (300, 16)])  # N < d (Gram path), N > d
def test_fid_of_features_equals_the_frechet_distance(n, d):
    ref, fill = _sets(n, d)
    a, b = fid.Stats.of(fill), fid.Stats.of(ref)
    assert bootstrap.fid_of_features(fill, ref) == pytest.approx(
        fid.frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-6
    )


@pytest.mark.parametrize("n,d,paired", [(60, 128, True), (60, 128, False), (300, 16, True)])
def test_each_resample_is_the_fid_of_the_images_drawn(n, d, paired):
    """The Gram-matrix shortcut gives, resample by resample, the FID of the drawn features."""
    ref, fill = _sets(n, d, seed=3)
    got = bootstrap.resampled_fids(ref, [fill, fill + 0.2], 4, seed=7, paired=paired)
    rng = np.random.default_rng(7)
    for r in range(4):
        idx = rng.integers(0, n, n)
        ridx = idx if paired else rng.integers(0, n, n)
        for j, s in enumerate([fill, fill + 0.2]):
            assert got[r, j] == pytest.approx(
                bootstrap.fid_of_features(s[idx], ref[ridx]), rel=1e-6
            )


def test_the_same_images_in_another_order_have_no_spread():
    ref, _ = _sets(80, 32)
    names = [f"cat{i:03d}" for i in range(80)]
    perm = np.random.default_rng(1).permutation(80)
    same = bootstrap.fid_spread(ref[perm], ref, 30, a_names=[names[i] for i in perm], b_names=names)
    assert same.paired and same.se < 1e-6
    # without names the rows cannot be matched: each side is drawn on its own, and it spreads
    apart = bootstrap.fid_spread(ref[perm], ref, 30)
    assert not apart.paired and apart.se > 0.1


def test_a_shift_moves_the_difference_by_a_known_spread():
    """Adding a constant c to every feature of a fill changes its FID by 2 c.(mu_fill - mu_ref) +
    |c|^2 (covariances do not move), so the bootstrap spread of the difference is that of a mean:
    2 std(c.(f_i - r_i)) / sqrt(N)."""
    n, d = 200, 48
    ref, fill = _sets(n, d, seed=5)
    c = np.full(d, 0.05)
    fids = bootstrap.resampled_fids(ref, [fill, fill + c], 800, seed=0)
    expected = 2 * np.std((fill - ref) @ c) / np.sqrt(n)
    assert np.std(fids[:, 1] - fids[:, 0], ddof=1) == pytest.approx(expected, rel=0.08)


def test_resample_counts_are_checked():
    for bad in (-1, 1, bootstrap.MAX_RESAMPLES + 1):
        with pytest.raises(ConfigError, match="--bootstrap"):
            bootstrap.check_resamples(bad)
    bootstrap.check_resamples(0)


def test_statistics_keep_their_images_names(tiny_data, tmp_path):
    feat = TinyFeatures(8)

    def tiny_fid(a, b, **kw):  # 64 dims: the tiny extractor's 8, repeated
        kw = {"dims": 64, "device": "cpu", "bootstrap": 20} | kw
        return pipeline.fid(a, b, feature_fn=lambda x: feat(x).repeat(1, 8), **kw)

    r = tiny_fid(tiny_data["test"], tiny_data["test"], save_stats=tmp_path / "a.npz")
    s = fid.Stats.load(tmp_path / "a.npz")
    assert s.names == sorted(p.stem for p in tiny_data["test"].iterdir())
    assert r.bootstrap_paired and r.bootstrap_resamples == 20 and r.fid_se_images < 1e-3
    r2 = tiny_fid(tmp_path / "a.npz", tiny_data["val"])
    assert r2.bootstrap_paired is False and r2.fid_se_images > 0
    assert any("bootstrap unpaired: A and B hold different" in w for w in r2.warnings)


def test_cli_fid_bootstrap(runner, tmp_path):
    ref, fill = _sets(120, 64, seed=2)
    names = [f"img{i}" for i in range(120)]
    fid.Stats(*_moments(fill), features=fill, names=names).write(tmp_path / "fill.npz")
    fid.Stats(*_moments(ref), features=ref, names=names).write(tmp_path / "ref.npz")
    out = invoke_json(
        runner,
        ["fid", str(tmp_path / "fill.npz"), str(tmp_path / "ref.npz"), "--dims", "64",
         "--bootstrap", "40", "--bootstrap-seed", "3"],
    )  # fmt: skip
    expected = bootstrap.fid_spread(fill, ref, 40, 3, names, names)
    assert out["bootstrap_paired"] and out["bootstrap_resamples"] == 40
    assert out["fid_se_images"] == pytest.approx(expected.se) and out["fid_se_images"] > 0
    fid.Stats(*_moments(ref), features=ref).write(tmp_path / "nameless.npz")  # an older file
    out = invoke_json(
        runner,
        ["fid", str(tmp_path / "fill.npz"), str(tmp_path / "nameless.npz"), "--dims", "64",
         "--bootstrap", "40"],
    )  # fmt: skip
    assert out["bootstrap_paired"] is False and out["fid_se_images"] > expected.se
    assert any("nameless.npz does not name its images" in w for w in out["warnings"])
    np.savez(tmp_path / "ptfid.npz", mu=ref.mean(0), sigma=np.cov(ref, rowvar=False))
    err = invoke_json(
        runner,
        ["fid", str(tmp_path / "fill.npz"), str(tmp_path / "ptfid.npz"), "--dims", "64",
         "--bootstrap", "40"],
        code=1,
    )  # fmt: skip
    assert "ptfid.npz" in err["error"] and "per-image features" in err["error"]
    err = invoke_json(
        runner,
        ["fid", str(tmp_path / "fill.npz"), str(tmp_path / "ref.npz"), "--bootstrap", "1"],
        code=1,
    )  # fmt: skip
    assert "at least 2 resamples" in err["error"]


def _moments(f):
    return f.mean(0), np.cov(f, rowvar=False), len(f)


def _study(tiny_run, tiny_data, out, **kw):
    """compare-schedules on the tiny model with the tiny extractor, bootstrapped."""
    kw = {"schedules_": ["cosine"], "total_iter": 2, "sweet_spots": [2], "seeds": [0]} | kw
    return pipeline.compare_schedules(
        tiny_data["masked"], tiny_data["masks"], tiny_data["test"], out, model=tiny_run,
        device="cpu", feature_fn=TinyFeatures(8), **kw,
    )  # fmt: skip


def test_compare_schedules_bootstrap_spreads_every_row(tiny_run, tiny_data, tmp_path):
    res = _study(
        tiny_run, tiny_data, tmp_path / "c", schedules_=["cosine", "linear"], total_iter=4,
        sweet_spots=[4], seeds=[0, 1], bootstrap=30,
    )  # fmt: skip
    assert res.bootstrap_resamples == 30
    best, other, *refs = res.rows
    assert best["fid_diff_se_images"] == 0.0 and all(r["fid_se_images"] > 0 for r in res.rows)
    # the reference fills differ from the best image by image: their difference spreads
    assert [r["fill"] for r in refs] == ["harmonic", "oracle"]
    assert all(r["fid_diff_se_images"] > 0 for r in refs)
    # on the tiny model both schedules fill alike at T = 4; the same images drawn for both rows
    # make their difference exactly 0 on every resample
    if other["fid_mean"] == best["fid_mean"]:
        assert other["fid_diff_se_images"] == 0.0
    else:
        assert other["fid_diff_se_images"] > 0


def test_ties_count_the_images_spread():
    from maskgit_cli import schedule_study

    rows = [
        {"fill": "maskgit", "schedule": s, "fid_mean": m, "fid_se": 0.1, "fid_diff_se_images": e}
        for s, m, e in (("cosine", 20.0, 0.0), ("linear", 20.4, 0.5), ("square", 21.0, 0.5))
    ]
    assert [r["schedule"] for r in schedule_study.ties(rows, "fid")] == ["cosine", "linear"]
    for r in rows:
        r["fid_diff_se_images"] = None  # seeds only: linear is 4 standard errors away
    assert [r["schedule"] for r in schedule_study.ties(rows, "fid")] == ["cosine"]


def test_plot_bars_add_the_images_spread_of_the_gap():
    from maskgit_cli import schedule_study

    row = {"fid_se": 0.3, "fid_diff_se_images": 0.4}
    assert schedule_study.error_bar(row, "fid") == pytest.approx(0.5)
    assert schedule_study.error_bar({"fid_se": 0.3, "fid_diff_se_images": None}, "fid") == 0.3
    # one seed has no spread over seeds; the images' still shows
    assert schedule_study.error_bar({"fid_se": None, "fid_diff_se_images": 0.4}, "fid") == 0.4
    assert schedule_study.error_bar({"psnr_se": 0.2}, "psnr") == 0.2


def test_compare_schedules_pairs_a_saved_reference_by_name(tiny_run, tiny_data, tmp_path):
    """Reference statistics saved in another order are put back image by image: the same spread
    as the reference computed from --ground-truth; without names they are drawn on their own."""
    from maskgit_cli import data

    feat = TinyFeatures(8)

    def study(out, reference_stats=None):
        return _study(
            tiny_run, tiny_data, tmp_path / out, baselines=False,
            reference_stats=reference_stats, bootstrap=25,
        )  # fmt: skip

    own = study("own")
    paths = data.list_images(tiny_data["test"])[::-1]  # saved in reverse order
    f = fid.features(fid.load_float_images(paths), feat)
    stats = fid.Stats.of(f)
    stats.names = [p.stem for p in paths]
    stats.write(tmp_path / "named.npz")
    named = study("named", tmp_path / "named.npz")
    assert named.rows[0]["fid_se_images"] == pytest.approx(own.rows[0]["fid_se_images"])
    assert not any("unpaired" in w for w in named.warnings)
    fid.Stats.of(f).write(tmp_path / "nameless.npz")
    nameless = study("nameless", tmp_path / "nameless.npz")
    assert any("bootstrap unpaired" in w for w in nameless.warnings)
    assert nameless.rows[0]["fid_se_images"] != pytest.approx(own.rows[0]["fid_se_images"])


def test_cli_fid_versus_a_second_fill(runner, tmp_path):
    """--versus: FID(A) - FID(VERSUS) against one reference; a fill against itself differs by 0
    on every resample; a constant shift of the features has the spread of a mean (above)."""
    n, d = 150, 64
    ref, fill = _sets(n, d, seed=4)
    names = [f"cat{i:03d}" for i in range(n)]
    c = np.full(d, 0.05)
    perm = np.random.default_rng(0).permutation(n)  # the second fill saved in another order
    fid.Stats(*_moments(ref), features=ref, names=names).write(tmp_path / "ref.npz")
    fid.Stats(*_moments(fill), features=fill, names=names).write(tmp_path / "a.npz")
    shifted = (fill + c)[perm]
    fid.Stats(*_moments(shifted), features=shifted, names=[names[i] for i in perm]).write(
        tmp_path / "v.npz"
    )
    args = ["--dims", "64", "--bootstrap", "400", "--versus"]
    out = invoke_json(runner, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"),
                               *args, str(tmp_path / "v.npz")])  # fmt: skip
    assert out["fid_versus"] == pytest.approx(bootstrap.fid_of_features(fill + c, ref), rel=1e-6)
    assert out["fid_difference"] == pytest.approx(out["fid"] - out["fid_versus"])
    expected = 2 * np.std((fill - ref) @ c) / np.sqrt(n)
    assert out["fid_difference_se_images"] == pytest.approx(expected, rel=0.1)
    same = invoke_json(runner, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"),
                                *args, str(tmp_path / "a.npz")])  # fmt: skip
    assert same["fid_difference"] == 0 and same["fid_difference_se_images"] == 0
    other = fill[:100]
    fid.Stats(*_moments(other), features=other, names=names[:100]).write(tmp_path / "o.npz")
    err = invoke_json(runner, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"),
                               *args, str(tmp_path / "o.npz")], code=1)  # fmt: skip
    assert "--versus" in err["error"] and "o.npz holds other images" in err["error"]
