"""Pad against tile on photos that are not the model's shape (docs/any-size.md).

    python benchmarks/any_size.py --test TEST --work WORK [--seeds 0 1] [--model cats64]

TEST holds images/ and masks/ of the model's size (a cats64-style test split). Each image and
its mask are enlarged 2x (bicubic / nearest) and cut to 4:3 (128 x 96 for a 64x64 model: the
top and bottom eighth go), so the model must fit a landscape photo. Then inpaints them with
`--fit pad` and `--fit tile` for each seed, and with the harmonic (Laplace) fill, and prints one
JSON object: FID / KID against the true 4:3 images and masked-region PSNR per variant. WORK keeps
the set and the outputs to look at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import emit, machine
from PIL import Image

from maskgit_cli import pipeline


def make_set(test: Path, out: Path) -> int:
    for sub in ("images", "masks", "masked"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted((test / "images").iterdir()):
        img = Image.open(p).convert("RGB")
        s = img.width * 2
        box = (0, s // 8, s, s - s // 8)
        img = img.resize((s, s), Image.BICUBIC).crop(box)
        mask = Image.open(test / "masks" / p.name).convert("L")
        mask = mask.resize((s, s), Image.NEAREST).crop(box)
        pixels, known = np.array(img), np.array(mask) >= 128
        if known.all():
            continue  # the crop cut the whole hole away
        img.save(out / "images" / f"{p.stem}.png")
        mask.save(out / "masks" / f"{p.stem}.png")
        pixels[~known] = 128
        Image.fromarray(pixels).save(out / "masked" / f"{p.stem}.png")
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", type=Path, required=True, help="a test split: images/, masks/")
    ap.add_argument("--work", type=Path, required=True, help="a folder for the set and outputs")
    ap.add_argument("--model", default="cats64")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    work, s = args.work, args.work / "set"
    count = make_set(args.test, s)
    truth = work / "truth.npz"
    masked = pipeline.fid(s / "images", s / "masked", save_stats=truth, overwrite=True)
    rows = [{"variant": "masked input", "fid": masked.fid, "kid": masked.kid}]
    variants = [
        (f"fit {f}, seed {seed}", f, seed, {}) for f in ("pad", "tile") for seed in args.seeds
    ]
    variants.append(("harmonic fill", "pad", 0, {"fill": "harmonic"}))
    for name, fit, seed, settings in variants:
        out = work / name.replace(", ", "_").replace(" ", "_")
        res = pipeline.inpaint(
            s / "masked",
            s / "masks",
            out,
            model=args.model,
            settings=settings,
            seed=seed,
            fit=fit,
            ground_truth=s / "images",
            overwrite=True,
        )
        f = pipeline.fid(out, truth)
        rows.append(
            {
                "variant": name,
                "fid": f.fid,
                "kid": f.kid,
                "psnr_masked": res.metrics["psnr_masked"],
                "images_per_second": res.images_per_second,
            }
        )
    emit({"benchmark": "any_size", "images": count, "results": rows, **machine()})


if __name__ == "__main__":
    main()
