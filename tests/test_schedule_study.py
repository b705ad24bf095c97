"""compare-schedules: the schedule study over (schedule, sweet spot, seed) cells with reference
rows."""

import json

from conftest import TinyFeatures, invoke_json

from maskgit_cli import pipeline


def test_compare_schedules_end_to_end(tiny_run, tiny_data, tmp_path):
    res = pipeline.compare_schedules(
        tiny_data["masked"],
        tiny_data["masks"],
        tiny_data["test"],
        tmp_path / "cmp",
        model=tiny_run,
        schedules_=["cosine", "linear"],
        total_iter=4,
        sweet_spots=[2, 4],
        seeds=[0, 1],
        device="cpu",
        feature_fn=TinyFeatures(8),
    )
    assert res.ranked_by == "fid" and not res.fid_skipped and len(res.rows) == 6
    cells, refs = res.rows[:4], res.rows[4:]
    fids = [r["fid_mean"] for r in cells]
    assert (
        fids == sorted(fids)
        and res.best == res.rows[0]
        and {r["fill"] for r in cells} == {"maskgit"}
    )
    for r in cells:
        assert r["psnr_mean"] is not None and r["fid_std"] is not None and r["seeds"] == 2
    # the reference rows: harmonic and oracle, one seed each (they are deterministic)
    assert [r["fill"] for r in refs] == ["harmonic", "oracle"] and all(
        r["seeds"] == 1 for r in refs
    )
    assert all(r["sweet_spot"] is None and r["fid_mean"] is not None for r in refs)
    out = tmp_path / "cmp"
    for f in ("results.json", "results.csv", "plot.png", "examples.png"):
        assert (out / f).is_file()
    assert len(list((out / "cells").iterdir())) == 10
    assert (
        json.loads((out / "results.json").read_text())["best"]["schedule"] == res.best["schedule"]
    )


def test_cli_compare_schedules_without_weights_ranks_by_psnr(runner, tiny_run, tiny_data, tmp_path):
    out = invoke_json(
        runner,
        [
            "compare-schedules",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--ground-truth",
            str(tiny_data["test"]),
            "--out",
            str(tmp_path / "c"),
            "--model",
            str(tiny_run),
            "--schedules",
            "cosine,square",
            "-T",
            "3",
            "--sweet-spots",
            "1,3",
            "--seeds",
            "0",
            "--device",
            "cpu",
            "--no-baselines",
        ],
    )
    assert out["fid_skipped"] and out["ranked_by"] == "psnr" and len(out["rows"]) == 4
    for key in (
        "schedule",
        "total_iter",
        "sweet_spot",
        "fid_mean",
        "fid_std",
        "kid_mean",
        "psnr_mean",
        "psnr_std",
        "ssim_mean",
        "seconds_per_image",
    ):
        assert key in out["rows"][0]
    psnrs = [r["psnr_mean"] for r in out["rows"]]
    assert psnrs == sorted(psnrs, reverse=True) and out["best"] == out["rows"][0]
    err = invoke_json(
        runner,
        [
            "compare-schedules",
            str(tiny_data["masked"]),
            "--masks",
            str(tiny_data["masks"]),
            "--ground-truth",
            str(tiny_data["test"]),
            "--out",
            str(tmp_path / "d"),
            "--model",
            str(tiny_run),
            "--require-fid",
            "--device",
            "cpu",
        ],
        code=1,
    )
    assert "FID-Inception weights not found" in err["error"]
