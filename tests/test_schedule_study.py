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
            "--bootstrap",
            "20",
        ],
    )
    assert out["fid_skipped"] and out["ranked_by"] == "psnr" and len(out["rows"]) == 4
    assert out["bootstrap_resamples"] == 0 and any(
        "--bootstrap skipped" in w for w in out["warnings"]
    )
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


def test_ties_within_one_standard_error_are_said_and_the_work_is_planned(
    tiny_run, tiny_data, tmp_path
):
    from maskgit_cli import schedule_study

    rows = [
        {
            "fill": "maskgit",
            "schedule": s,
            "total_iter": 4,
            "sweet_spot": 4,
            "fid_mean": m,
            "fid_se": se,
        }
        for s, m, se in (("cosine", 20.0, 0.3), ("linear", 20.2, 0.1), ("square", 21.0, 0.2))
    ]
    assert [r["schedule"] for r in schedule_study.ties(rows, "fid")] == ["cosine", "linear"]
    plans = []
    res = pipeline.compare_schedules(
        tiny_data["masked"],
        tiny_data["masks"],
        tiny_data["test"],
        tmp_path / "c",
        model=tiny_run,
        schedules_=["cosine"],
        total_iter=2,
        sweet_spots=[1, 2],
        seeds=[0, 1],
        device="cpu",
        feature_fn=TinyFeatures(8),
        on_plan=plans.append,
    )
    assert (
        plans == [res.work] and res.work["runs"] == 2 * 2 + 2 and res.work["inpaintings"] == 6 * 10
    )
    assert res.tied_with_best and res.tied_with_best[0].startswith("cosine T=2")
    assert (tmp_path / "c" / "plot.png").is_file()


def test_compare_schedules_reads_white_hole_masks(runner, tiny_run, tiny_data, tmp_path):
    import numpy as np
    from PIL import Image

    white = tmp_path / "white"
    white.mkdir()
    for p in tiny_data["masks"].iterdir():
        Image.fromarray(255 - np.asarray(Image.open(p))).save(white / p.name)
    out = invoke_json(
        runner,
        [
            "compare-schedules",
            str(tiny_data["masked"]),
            "--masks",
            str(white),
            "--mask-missing",
            "white",
            "--ground-truth",
            str(tiny_data["test"]),
            "--model",
            str(tiny_run),
            "--schedule",
            "cosine",
            "-T",
            "2",
            "--sweet-spot",
            "2",
            "--seed",
            "0",
            "--no-baselines",
            "--out",
            str(tmp_path / "c"),
            "--device",
            "cpu",
        ],
    )
    assert out["count"] == 10 and out["rows"][0]["psnr_mean"] is not None
