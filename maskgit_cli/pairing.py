"""Pairing images with their masks (or ground-truth images) by file name.

Rules, in order, each over what is still unpaired: the same file name; the same name without
image suffixes (cat.jpg.png <-> cat.jpg); the same digits as written (image_007 <-> mask_007);
the same number (image_7 <-> mask_007). A key counts only where it is unique on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from maskgit_cli.data import IMAGE_SUFFIXES, list_images
from maskgit_cli.errors import DataError


def _base(name: str) -> str:
    """A file name without its image suffixes: cat.jpg.png -> cat, mask_000.png -> mask_000."""
    while Path(name).suffix.lower() in IMAGE_SUFFIXES:
        name = Path(name).stem
    return name


def _digits(name: str) -> str | None:
    """The last run of digits in the base name, as written: image_007 -> '007'."""
    found = re.findall(r"\d+", _base(name))
    return found[-1] if found else None


def _number(name: str) -> int | None:
    d = _digits(name)
    return int(d) if d is not None else None


@dataclass
class Pairing:
    pairs: list[tuple[Path, Path]]  # (image, partner) in image order
    unused: list[Path]  # partners no image claimed


def pair_files(images: list[Path], partners: list[Path], what: str, where: str | Path) -> Pairing:
    """Pair each image with one partner file (a mask, a ground-truth image).

    Rules, in order, each over what is still unpaired: the same file name; the same name without
    image suffixes (cat.jpg.png <-> cat.jpg); the same digits as written (image_007 <-> mask_007);
    the same number (image_7 <-> mask_007). A key counts only when exactly one image and one
    partner share it; a key shared on either side is an error naming the files, so img_1 and
    img_01 never silently share a mask."""
    pairs: dict[Path, Path] = {}
    free = set(partners)
    for key in (
        lambda p: p.name,
        lambda p: _base(p.name),
        lambda p: _digits(p.name),
        lambda p: _number(p.name),
    ):
        todo = [p for p in images if p not in pairs]
        if not todo or not free:
            break
        by_image: dict = {}
        for p in todo:
            by_image.setdefault(key(p), []).append(p)
        by_partner: dict = {}
        for q in partners:  # in the given order (not the set's): error messages stay reproducible
            if q in free:
                by_partner.setdefault(key(q), []).append(q)
        for k, imgs in by_image.items():
            if k is None or k not in by_partner:
                continue
            cands = by_partner[k]
            if len(imgs) > 1 or len(cands) > 1:
                names = ", ".join(p.name for p in imgs + cands)
                raise DataError(
                    f"ambiguous pairing of images and {what}s ({names}): rename them so that each "
                    f"image has one {what} of the same name"
                )
            pairs[imgs[0]] = cands[0]
            free.discard(cands[0])
    unpaired = [p.name for p in images if p not in pairs]
    if unpaired:
        shown = ", ".join(unpaired[:5]) + (
            f" (+{len(unpaired) - 5} more)" if len(unpaired) > 5 else ""
        )
        raise DataError(
            f"no {what} in {where} for: {shown}; {what}s pair with images by name or by number"
        )
    return Pairing(pairs=[(p, pairs[p]) for p in images], unused=sorted(free))


def pair_masks(image_dir: str | Path, mask_dir: str | Path) -> Pairing:
    """Pair masked images with masks (see pair_files); lab: image_000.png <-> mask_000.png."""
    return pair_files(list_images(image_dir), list_images(mask_dir), "mask", mask_dir)


def pair_inputs(masked_dir: str | Path, masks_dir: str | Path) -> tuple[Pairing, list[str]]:
    """(image, mask) pairs and warnings: masks that no image claimed are named, not ignored."""
    pairing = pair_masks(masked_dir, masks_dir)
    notes = []
    if pairing.unused:
        names = ", ".join(p.name for p in pairing.unused[:3]) + (
            f" and {len(pairing.unused) - 3} more" if len(pairing.unused) > 3 else ""
        )
        notes.append(
            f"{len(pairing.unused)} mask(s) in {masks_dir} have no image in {masked_dir}: {names}"
        )
    return pairing, notes


def ground_truth_paths(folder: str | Path, images: list[Path]) -> list[Path]:
    """The ground-truth image of each image (same pairing rules as masks; extra ones are fine)."""
    return [
        g for _, g in pair_files(images, list_images(folder), "ground-truth image", folder).pairs
    ]
