"""The recipe study's measuring stick: one model + decode settings on the validation inpainting set.

    python benchmarks/study.py --model RUN --name label [--set temperature=0.5 ...] [--log
    study.jsonl]

Inpaints VAL/masked (holes from `maskgit mask`) with ground truth, computes masked-region PSNR /
SSIM / L1, and FID / KID against the statistics of VAL/images (pytorch-fid convention, cached in
--stats), and prints one JSON row (appended to --log). `--set fill=harmonic` or `fill=oracle`
gives the reference rows. The model card's study table is made of these rows.

`--precision bf16` scores the fill as a CPU with bf16 matrix units makes it (the weights in bf16,
as `auto` picks there). Elsewhere maskgit refuses bf16 because it would be emulated and slow;
add `--emulate-bf16` to run it anyway (about 5x the fp32 time on an AVX2 CPU): torch rounds the
same tensors to bf16 and sums the products in fp32, as the matrix units do, so the figures stand
for such a CPU up to the order of the sums. The row records the precision it ran in.

Set up once:
    maskgit mask $DATA/val --out VAL
    maskgit fid VAL/images VAL/masked --save-stats STATS
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import emit, machine

from maskgit_cli import pipeline
from maskgit_cli.config import PRECISIONS
from maskgit_cli.errors import MaskgitError


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def evaluate(
    model: str | None,
    val: Path,
    stats: Path,
    settings: dict,
    seed: int = 0,
    batch_size: int = 50,
    precision: str = "auto",
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
            precision=precision,
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
        "precision": res.precision,
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
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument(
        "--emulate-bf16",
        action="store_true",
        help="let --precision bf16 run on a CPU without bf16 units (slow; same rounding)",
    )
    args = ap.parse_args()
    host = machine()  # before the switch below, so the row says what the CPU really has
    if args.emulate_bf16:
        from maskgit_cli import precision

        precision.cpu_bf16 = lambda: True  # the hardware check only; the arithmetic is torch's
        host["bf16_emulated"] = True
    settings = {k: _value(v) for k, v in (s.split("=", 1) for s in args.sets)}
    try:
        scores = evaluate(
            args.model, args.val, args.stats, settings, args.seed, precision=args.precision
        )
    except MaskgitError as exc:  # a user mistake: one line, exit 1
        sys.exit(f"error: {exc}")
    row = {"name": args.name, "model": args.model, "seed": args.seed, **scores, **host}
    if args.log:
        with args.log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    emit(row)


if __name__ == "__main__":
    main()
