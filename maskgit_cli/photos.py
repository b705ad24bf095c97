"""Inpainting images of any size, in memory or as files.

    filled = fill(inpainter, images, missing, seed=0)           uint8 (3, H, W) tensors, any sizes
    summary, rows = inpaint_pairs(inpainter, pairs, out_dir)     (image, mask) files -> OUT/NAME.png

An image of the model's size goes to the model as it is; any other is brought to it window by
window (fit.py) and the fills come back at the image's size, into its own hole: the known pixels of
every result equal the input's, bit for bit. Each image draws from its own generator, so results
do not depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maskgit_cli import data, fit, runtime
from maskgit_cli.errors import DataError
from maskgit_cli.inpaint import Inpainter


@dataclass
class Filled:
    images: list[torch.Tensor]  # uint8 (3, H, W), each at its input's size
    masked_tokens: list[int | None]  # tokens generated per image (None: the harmonic fill)
    steps: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = field(default_factory=list)
    # with record: per image, (token masks (h, w) per step, uint8 (3, S, S) images per step)


def fill(
    inpainter: Inpainter,
    images: list[torch.Tensor],
    missing: list[torch.Tensor],
    *,
    seed: int = 0,
    first_index: int = 0,
    truths: list[torch.Tensor] | None = None,
    fit_mode: str = "pad",
    record: bool = False,
) -> Filled:
    """Inpaint images uint8 (3, H, W) with holes bool (H, W), any sizes, as one batch. Image i
    draws from the generator of (seed, first_index + i). `truths` only for the oracle fill."""
    size = inpainter.size
    inputs, holes, small_truths, gens, rows, wins = [], [], [], [], [], []
    for i, (img, hole) in enumerate(zip(images, missing, strict=True)):
        H, W = hole.shape
        truth = truths[i] if truths is not None else None
        if size is None or (H, W) == (size, size):
            parts, w = [(img, hole, truth)], []
        else:
            w = fit.windows(H, W, fit_mode)
            parts = [fit.to_model(img, hole, win, size, truth) for win in w]
        rows.append(list(range(len(inputs), len(inputs) + len(parts))))
        wins.append(w)
        for k, (x, h, t) in enumerate(parts):
            inputs.append(x)
            holes.append(h)
            small_truths.append(t)
            gens.append(runtime.image_generator(seed + 7919 * k, first_index + i))
    if size is None:  # the harmonic fill works at every image's own size, one by one
        results = [
            inpainter(x[None], h[None], [g]).images[0]
            for x, h, g in zip(inputs, holes, gens, strict=True)
        ]
        unknown, batch = None, None
    else:
        truth_batch = torch.stack(small_truths) if small_truths[0] is not None else None
        batch = inpainter(
            torch.stack(inputs), torch.stack(holes), gens, record=record, truth_u8=truth_batch
        )
        results, unknown = list(batch.images), batch.unknown
    out = Filled(images=[], masked_tokens=[])
    for img, hole, r, w in zip(images, missing, rows, wins, strict=True):
        if not w:
            result = results[r[0]]
        else:  # the model's fills back at the image's size, into the image's own hole
            fill01 = fit.from_model([results[j] for j in r], w, *hole.shape)
            result = inpainter.finish(fill01[None], img[None], hole[None])[0]
        out.images.append(result)
        out.masked_tokens.append(
            int(sum(unknown[j].sum() for j in r)) if unknown is not None else None
        )
        if record and batch is not None and batch.masks:
            out.steps.append(([m[r[0]] for m in batch.masks], [s[r[0]] for s in batch.step_images]))
    return out


# ------------------------------------------------------------------------------ files


def save_steps_figure(masks: list[torch.Tensor], steps: list[torch.Tensor], path: Path) -> None:
    """One labelled figure of a decoding: per step, the tokens still masked (white) and the image
    the sampled tokens decode to."""
    from maskgit_cli import plots

    size = steps[0].shape[-1]
    tiles = [
        data.to_uint8(
            F.interpolate(m[None, None].float(), size=size, mode="nearest")[0].expand(3, -1, -1)
        )
        for m in masks
    ]
    plots.image_grid(
        [tiles, steps],
        path,
        row_labels=["still masked", "decoded"],
        col_labels=[f"step {i + 1}" for i in range(len(steps))],
        scale=max(1, 96 // size),
    )


def read_pair(image: Path, mask: Path, truth: Path | None, mask_missing: str):
    """(image uint8 (3, H, W), missing bool (H, W), truth or None) from files, the mask checked
    against its image (same size, not inverted)."""
    img = torch.from_numpy(data.read_rgb(image)).permute(2, 0, 1).contiguous()
    H, W = img.shape[1:]
    missing = data.read_mask(mask, (W, H), mask_missing)
    other = "white" if mask_missing == "black" else "black"
    data.check_mask_orientation(img, missing, mask, f"--mask-missing {other}")
    gt = None
    if truth is not None:
        gt = torch.from_numpy(data.read_rgb(truth)).permute(2, 0, 1).contiguous()
        if gt.shape != img.shape:
            raise DataError(
                f"{truth}: ground truth is {gt.shape[2]}x{gt.shape[1]} but its image {image.name} "
                f"is {W}x{H}; they must match"
            )
    return img, missing, gt


METRICS = ("psnr", "ssim", "l1", "psnr_masked", "ssim_masked", "l1_masked")


def inpaint_pairs(
    inpainter: Inpainter,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    *,
    seed: int,
    batch_size: int,
    mask_missing: str = "black",
    save_steps: bool = False,
    truths: list[Path] | None = None,
    fit_mode: str = "pad",
    names: list[str] | None = None,
    on_progress=None,
) -> tuple[dict[str, float] | None, list[dict[str, Any]]]:
    """Inpaint every (image, mask) pair into out_dir/NAME.png (or the given `names`) at the
    image's own size; per-image metrics against `truths`. Returns (mean metrics or None,
    per-image rows)."""
    from maskgit_cli import metrics as metrics_mod

    names = names or data.output_names([p for p, _ in pairs])
    per_image: list[dict[str, Any]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        read = [
            read_pair(p, m, truths[start + i] if truths else None, mask_missing)
            for i, (p, m) in enumerate(chunk)
        ]
        images, missing, gts = (list(x) for x in zip(*read, strict=True))
        done = fill(
            inpainter,
            images,
            missing,
            seed=seed,
            first_index=start,
            fit_mode=fit_mode,
            truths=gts if truths else None,
            record=save_steps,
        )
        for i, ((p, _m), out) in enumerate(zip(chunk, done.images, strict=True)):
            name = names[start + i]
            data.save_png(out, out_dir / name)
            per_image.append(
                {
                    "file": p.name,
                    "output": name,
                    "width": int(out.shape[2]),
                    "height": int(out.shape[1]),
                    "missing_fraction": missing[i].float().mean().item(),
                    "masked_tokens": done.masked_tokens[i],
                }
            )
            if save_steps and done.steps:
                save_steps_figure(*done.steps[i], out_dir / "steps" / name)
        if truths:
            same = len({tuple(o.shape) for o in done.images}) == 1
            groups = [list(range(len(chunk)))] if same else [[i] for i in range(len(chunk))]
            for idx in groups:
                vals = metrics_mod.all_metrics(
                    torch.stack([done.images[i] for i in idx]).float() / 255,
                    torch.stack([gts[i] for i in idx]).float() / 255,
                    torch.stack([missing[i] for i in idx]),
                )
                for j, i in enumerate(idx):
                    per_image[start + i].update({k: v[j].item() for k, v in vals.items()})
        if on_progress:
            on_progress(min(start + batch_size, len(pairs)), len(pairs))
    summary = None
    if truths:
        summary = {}
        for k in METRICS:
            vals = torch.tensor([r[k] for r in per_image], dtype=torch.float64)
            vals = vals[torch.isfinite(vals)]  # an image with no hole has no masked-region value
            summary[k] = vals.mean().item() if len(vals) else None
    return summary, per_image
