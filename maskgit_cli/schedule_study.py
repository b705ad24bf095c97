"""The schedule study behind `maskgit compare-schedules`: inpaint one set under every
(schedule, sweet spot, seed) cell, plus the harmonic and oracle reference fills, and tabulate FID /
KID / masked PSNR / SSIM per cell (mean and spread over seeds), ranked, with a plot and examples.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from maskgit_cli import data
from maskgit_cli.inpaint import InpaintSettings
from maskgit_cli.photos import inpaint_pairs

REFERENCE_FILLS = ("harmonic", "oracle")  # the rows compare-schedules adds with --baselines
FILES = {"json": "results.json", "csv": "results.csv", "plot": "plot.png", "grid": "examples.png"}


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, spread over the seeds: the population std, 0 for one seed)."""
    v = [x for x in values if x is not None and x == x]
    if not v:
        return None, None
    t = torch.tensor(v, dtype=torch.float64)
    return t.mean().item(), (t.std(unbiased=False).item() if len(v) > 1 else 0.0)


def standard_error(values: list[float | None]) -> float | None:
    """The standard error of the mean over seeds (sample std / sqrt(n)); None below 2 seeds."""
    v = [x for x in values if x is not None and x == x]
    if len(v) < 2:
        return None
    return torch.tensor(v, dtype=torch.float64).std(unbiased=True).item() / len(v) ** 0.5


def ties(ranked: list[dict], metric: str) -> list[dict]:
    """The rows within one standard error of the best: over seeds, theirs or the best's (the
    larger), and, when the images were bootstrapped, combined with the images' standard error
    of their difference from the best. The ranking cannot tell them apart. The best alone when
    no row has a standard error."""
    if not ranked or ranked[0][f"{metric}_mean"] is None:
        return ranked[:1]
    best = ranked[0]
    out = []
    for r in ranked:
        se = max(x for x in (best[f"{metric}_se"], r[f"{metric}_se"], 0.0) if x is not None)
        se = (se**2 + (r.get(f"{metric}_diff_se_images") or 0.0) ** 2) ** 0.5
        if (
            r[f"{metric}_mean"] is not None
            and abs(r[f"{metric}_mean"] - best[f"{metric}_mean"]) <= se
        ):
            out.append(r)
    return out


def error_bar(r: dict, metric: str) -> float | None:
    """A row's bar in the plot: its standard error over seeds, combined, when the images were
    bootstrapped, with the images' standard error of its gap to the best row (the spread ties
    are judged by; the best row's own gap has none)."""
    seeds, images = r[f"{metric}_se"], r.get(f"{metric}_diff_se_images")
    if images is None:
        return seeds
    return ((seeds or 0.0) ** 2 + images**2) ** 0.5


def _image_spread(rows: list[dict], fids, best: int) -> None:
    """Fill each row's fid_se_images (the spread of its FID over the resamples) and
    fid_diff_se_images (of its FID minus the best row's, rows[best], the same images drawn for
    both), from `fids` (resamples x rows, in the order of `rows`)."""
    import numpy as np

    fids = np.asarray(fids)
    for i, r in enumerate(rows):
        r["fid_se_images"] = float(np.std(fids[:, i], ddof=1))
        r["fid_diff_se_images"] = float(np.std(fids[:, i] - fids[:, best], ddof=1))


def cells(
    base: InpaintSettings,
    schedules: list[str],
    total_iter: int,
    spots: list[int],
    seeds: list[int],
    baselines: bool,
) -> list[tuple[InpaintSettings, list[int]]]:
    """(settings, seeds) of every row: the grid, then the deterministic references (one seed)."""
    jobs = [
        (dataclasses.replace(base, schedule=s, total_iter=total_iter, sweet_spot=t), seeds)
        for s in schedules
        for t in spots
    ]
    if baselines:
        jobs += [(dataclasses.replace(base, fill=f), seeds[:1]) for f in REFERENCE_FILLS]
    return jobs


def _thumb(path: Path, size: int) -> torch.Tensor:
    """An image for the examples grid: uint8 (3, size, size) whatever its own size."""
    return data.load_images([path], size, resize=True)[0]


def label_of(row: dict) -> str:
    """A row's name: 'cosine T=12 t=8', or its reference fill."""
    if row["fill"] != "maskgit":
        return row["fill"]
    return f"{row['schedule']} T={row['total_iter']} t={row['sweet_spot']}"


def label(settings: InpaintSettings) -> str:
    if settings.fill != "maskgit":
        return settings.fill
    return f"{settings.schedule}_T{settings.total_iter}_t{settings.sweet_spot}"


def run(
    model,
    pairs: list[tuple[Path, Path]],
    truths: list[Path],
    out: Path,
    *,
    jobs: list[tuple[InpaintSettings, list[int]]],
    schedules: list[str],
    total_iter: int,
    spots: list[int],
    batch_size: int,
    mask_missing: str = "black",
    fid_of: Callable[[Path], tuple[float, float | None, Any]] | None,
    notes: list[str],
    resample: Callable[[list], Any] | None = None,
    on_cell: Callable[[int, int, str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """Every job into out/cells/<label>_seed<s>, then results.json / .csv, plot.png and
    examples.png in `out`. fid_of(folder) -> (FID, KID, features) against the reference, or None
    to rank by PSNR; resample(features of each row) -> (resamples, rows) FIDs over images drawn
    again (bootstrap.resampled_fids), or None. Returns (rows, best row, ranked_by, tied)."""
    from maskgit_cli import plots

    cfg = model.config
    size = cfg.data.image_size
    total_runs = sum(len(js) for _, js in jobs)
    rows, examples, run_i = [], {}, 0
    first_features = []  # each row's features at its first seed, for the bootstrap
    for settings, job_seeds in jobs:
        inpainter = model.inpainter(settings)
        name = label(settings)
        per_seed = []
        for seed in job_seeds:
            cell_dir = out / "cells" / f"{name}_seed{seed}"
            t0 = time.time()
            summary, _ = inpaint_pairs(
                inpainter,
                pairs,
                cell_dir,
                seed=seed,
                batch_size=batch_size,
                truths=truths,
                mask_missing=mask_missing,
            )
            secs = time.time() - t0
            f, k, feats = fid_of(cell_dir) if fid_of is not None else (None, None, None)
            if resample is not None and seed == job_seeds[0]:
                first_features.append(feats)
            per_seed.append(
                {
                    "fid": f,
                    "kid": k,
                    "psnr": summary["psnr_masked"],
                    "ssim": summary["ssim_masked"],
                    "seconds_per_image": secs / len(pairs),
                }
            )
            if seed == job_seeds[0]:
                examples[name] = _thumb(cell_dir / f"{pairs[0][0].stem}.png", size)
            run_i += 1
            if on_cell:
                on_cell(run_i, total_runs, name.replace("_", " ") + f" seed={seed}")
        fm, fs = mean_std([r["fid"] for r in per_seed])
        fse, pse = (
            standard_error([r["fid"] for r in per_seed]),
            standard_error([r["psnr"] for r in per_seed]),
        )
        km, _ = mean_std([r["kid"] for r in per_seed])
        pm, ps = mean_std([r["psnr"] for r in per_seed])
        sm, _ = mean_std([r["ssim"] for r in per_seed])
        spi, _ = mean_std([r["seconds_per_image"] for r in per_seed])
        maskgit = settings.fill == "maskgit"
        rows.append(
            {
                "fill": settings.fill,
                "schedule": settings.schedule if maskgit else settings.fill,
                "total_iter": total_iter if maskgit else None,
                "sweet_spot": settings.sweet_spot if maskgit else None,
                "fid_mean": fm,
                "fid_std": fs,
                "fid_se": fse,
                "kid_mean": km,
                "psnr_mean": pm,
                "psnr_std": ps,
                "psnr_se": pse,
                "ssim_mean": sm,
                "seconds_per_image": spi,
                "seeds": len(job_seeds),
                "fid_se_images": None,
                "fid_diff_se_images": None,
            }
        )
    ranked_by = "fid" if fid_of is not None else "psnr"
    metric = f"{ranked_by}_mean"
    sign = 1 if ranked_by == "fid" else -1  # lower FID, higher PSNR is better
    ranked = sorted(
        (r for r in rows if r["fill"] == "maskgit"),
        key=lambda r: (r[metric] is None, sign * (r[metric] or 0)),
    )
    built = rows  # the order first_features follows
    rows = ranked + [
        r for r in rows if r["fill"] != "maskgit"
    ]  # references last, in their own order
    best = ranked[0] if ranked else None
    if resample is not None and fid_of is not None and best is not None:
        _image_spread(built, resample(first_features), built.index(best))
    tied = [label_of(r) for r in ties(ranked, ranked_by)]
    (out / FILES["json"]).write_text(
        json.dumps(
            {
                "rows": rows,
                "best": best,
                "tied_with_best": tied,
                "ranked_by": ranked_by,
                "warnings": notes,
            },
            indent=2,
        )
    )
    with open(out / FILES["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    nan = float("nan")

    def point(r: dict, x: float) -> tuple[float, float, float | None]:
        return (x, r[metric] if r[metric] is not None else nan, error_bar(r, ranked_by))

    series = [
        plots.Series(s, [point(r, r["sweet_spot"]) for r in ranked if r["schedule"] == s])
        for s in schedules
    ]
    for r in rows[len(ranked) :]:  # a reference is one value: a flat line across the sweet spots
        series.append(
            plots.Series(f"{r['fill']} (reference)", [point(r, t) for t in spots], reference=True)
        )
    ylabel = "FID (lower is better)" if ranked_by == "fid" else "masked PSNR, dB (higher is better)"
    plots.chart(
        series,
        out / FILES["plot"],
        f"{ylabel.split(' (')[0]} by sweet spot t, T = {total_iter} "
        + (
            "(bars: 1 SE, seeds and the gap to the best over images)"
            if any(r.get(f"{ranked_by}_diff_se_images") is not None for r in rows)
            else "(bars: 1 standard error over seeds)"
        ),
        "sweet spot t (decoding steps run)",
        ylabel,
    )
    first_masked, first_gt = _thumb(pairs[0][0], size), _thumb(truths[0], size)
    grid_rows = [
        [first_masked, *[examples[f"{s}_T{total_iter}_t{t}"] for t in spots], first_gt]
        for s in schedules
    ]
    plots.image_grid(
        grid_rows,
        out / FILES["grid"],
        row_labels=schedules,
        col_labels=["input", *[f"t={t}" for t in spots], "truth"],
    )
    return rows, best, ranked_by, tied
