"""The recipe study's measuring stick: one model + decode settings on the validation inpainting set.

    python benchmarks/study.py --model RUN --name label [--set temperature=0.5 ...] [--log
    study.jsonl]

Inpaints VAL/masked (holes from `maskgit mask`) with ground truth, computes masked-region PSNR /
SSIM / L1, and FID / KID against the statistics of VAL/images (pytorch-fid convention, cached in
--stats), and prints one JSON row (appended to --log). `--set fill=harmonic` or `fill=oracle`
gives the reference rows. The model card's study table is made of these rows.

Set up once:
    maskgit mask $DATA/val --out VAL
    maskgit fid VAL/images VAL/masked --save-stats STATS
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import emit, machine

from maskgit_cli import pipeline


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def evaluate(
    model: str | None, val: Path, stats: Path, settings: dict, seed: int = 0, batch_size: int = 50
) -> dict:
    with tempfile.TemporaryDirectory(prefix="study-") as tmp:
        t0 = time.time()
        res = pipeline.inpaint(
            val / "masked",
            val / "masks",
            Path(tmp) / "out",
            model=model,
            settings=settings,
            batch_size=batch_size,
            seed=seed,
            device="cpu",
            ground_truth=val / "images",
        )
        inpaint_s = time.time() - t0
        f = pipeline.fid(Path(tmp) / "out", stats, device="cpu")
    m = res.metrics
    return {
        "fid": f.fid,
        "kid": f.kid,
        "psnr_masked": m["psnr_masked"],
        "ssim_masked": m["ssim_masked"],
        "l1_masked": m["l1_masked"],
        "psnr": m["psnr"],
        "inpaint_seconds": inpaint_s,
        "settings": res.settings,
        "count": res.count,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run directory (default: the bundled model)")
    ap.add_argument("--name", required=True)
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="decode setting key=value"
    )
    ap.add_argument(
        "--val", type=Path, required=True, help="an inpainting set: masked/, masks/, images/"
    )
    ap.add_argument("--stats", type=Path, required=True, help="FID statistics of VAL/images (.npz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", type=Path, default=None)
    args = ap.parse_args()
    settings = {k: _value(v) for k, v in (s.split("=", 1) for s in args.sets)}
    row = {
        "name": args.name,
        "model": args.model,
        **evaluate(args.model, args.val, args.stats, settings, args.seed),
        **machine(),
    }
    if args.log:
        with args.log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    emit(row)


if __name__ == "__main__":
    main()
