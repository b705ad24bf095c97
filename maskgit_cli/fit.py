"""Inpainting a photo of any size with a model of one size S: the model works at S x S, the
photo keeps its own size, and its known pixels come back bit-identical.

    windows = fit.windows(H, W, "pad")          square regions of the photo the model sees
    small, hole = fit.to_model(img, missing, win, S)      each region brought to S x S
    fill = fit.from_model(out_small, win, H, W)           the model's S x S result at photo scale

`pad`: one square window, the photo padded to its longer side by reflection (the padding is
known context the model sees, then cut away). `tile`: square windows of the shorter side, spread
evenly along the longer one, overlapping; where two overlap their fills are averaged. A square
photo is one window either way. The fill is resized back (bicubic) and pasted into the hole only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskgit_cli import data

FITS = ("pad", "tile")


@dataclass(frozen=True)
class Window:
    top: int  # may be negative (pad): rows above the photo are reflected
    left: int
    side: int


def windows(H: int, W: int, fit: str = "pad") -> list[Window]:
    """The square regions of an H x W photo the model inpaints."""
    if H == W:
        return [Window(0, 0, H)]
    if fit == "pad":
        side = max(H, W)
        return [Window((H - side) // 2, (W - side) // 2, side)]
    side, long = min(H, W), max(H, W)
    n = math.ceil(long / side)
    starts = [round(i * (long - side) / (n - 1)) for i in range(n)] if n > 1 else [0]
    return [Window(0, s, side) if W > H else Window(s, 0, side) for s in starts]


def _crop(x: torch.Tensor, win: Window) -> torch.Tensor:
    """x (C, H, W) -> (C, side, side) at the window, reflected where it leaves the photo."""
    C, H, W = x.shape
    top, left, side = win.top, win.left, win.side
    pad = (max(0, -left), max(0, left + side - W), max(0, -top), max(0, top + side - H))
    if any(pad):
        mode = "reflect" if max(pad) < min(H, W) else "replicate"
        x = F.pad(x[None].float(), pad, mode=mode)[0].to(x.dtype)
        top, left = top + pad[2], left + pad[0]
    return x[:, top : top + side, left : left + side]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """float (B, C, s, s) -> (B, C, size, size): area average down, bicubic up."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def to_model(
    image_u8: torch.Tensor,
    missing: torch.Tensor,
    win: Window,
    size: int,
    truth_u8: torch.Tensor | None = None,
):
    """A window of the photo at the model's size: (masked uint8 (3, S, S) with the hole gray as
    in training, missing (S, S): a model pixel is missing if any photo pixel under it is, truth
    uint8 (3, S, S) or None). The photo's hole may hold anything (its own old content): it is
    never shown to the model."""
    img = _crop(image_u8, win).float()[None]
    hole = _crop(missing[None], win).float()[None]
    small = data.to_uint8(_resize(img, size)[0] / 255)
    if win.side >= size:
        hole_small = F.adaptive_max_pool2d(hole, size)[0, 0] > 0
    else:
        hole_small = F.interpolate(hole, size=(size, size), mode="nearest")[0, 0] > 0
    truth = (
        data.to_uint8(_resize(_crop(truth_u8, win).float()[None], size)[0] / 255)
        if truth_u8 is not None
        else None
    )
    return data.mask_out(small, hole_small), hole_small, truth


def from_model(result_u8: list[torch.Tensor], wins: list[Window], H: int, W: int) -> torch.Tensor:
    """The model's results (uint8 (3, S, S) per window) at photo scale, averaged where windows
    overlap -> float (3, H, W) in [0, 1]."""
    total = torch.zeros(3, H, W)
    weight = torch.zeros(1, H, W)
    for res, win in zip(result_u8, wins, strict=True):
        big = F.interpolate(
            res[None].float() / 255, size=(win.side, win.side), mode="bicubic", align_corners=False
        )[0].clamp(0, 1)
        y0, x0 = max(0, win.top), max(0, win.left)
        y1, x1 = min(H, win.top + win.side), min(W, win.left + win.side)
        total[:, y0:y1, x0:x1] += big[:, y0 - win.top : y1 - win.top, x0 - win.left : x1 - win.left]
        weight[:, y0:y1, x0:x1] += 1
    return total / weight.clamp_min(1)
