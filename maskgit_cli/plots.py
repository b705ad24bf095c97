"""Figures drawn with PIL only (no plotting dependency): image grids and a line chart."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from maskgit_cli.outputs import atomic_write

COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at 12 px: at its default 10 px the spaces all but vanish."""
    return ImageFont.load_default(size=12)


def _save(img: Image.Image, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def image_grid(
    rows: list[list[torch.Tensor]],
    path: Path,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    scale: int = 2,
    pad: int = 4,
) -> None:
    """rows of uint8 (3, H, W) images -> one labelled PNG."""
    font = _font()
    H, W = rows[0][0].shape[1] * scale, rows[0][0].shape[2] * scale
    left = 8 + int(max((font.getlength(t) for t in row_labels or []), default=0))
    top = 18 if col_labels else pad
    cols = max(len(r) for r in rows)
    canvas = Image.new(
        "RGB", (left + cols * (W + pad) + pad, top + len(rows) * (H + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        draw.text((left + j * (W + pad) + 2, 2), label, fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + i * (H + pad)
        if row_labels:
            draw.text((4, y + H // 2 - 5), row_labels[i], fill="black", font=font)
        for j, img in enumerate(row):
            tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((W, H), Image.NEAREST)
            canvas.paste(tile, (left + j * (W + pad), y))
    _save(canvas, path)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (640, 420),
) -> None:
    """One line per series of (x, y) points, axes with ticks, a legend."""
    font = _font()
    w, h = size
    ml, mr, mt, mb = 60, 20 + int(max((font.getlength(n) for n in series), default=0)) + 40, 30, 45
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s if p[1] == p[1]]  # drop NaN
    d.text((ml + 80, 8), title, fill="black", font=font)
    if not pts:
        d.text((ml, h // 2), "no data", fill="black", font=font)
        _save(img, path)
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    span = y1 - y0
    y0, y1 = y0 - 0.05 * span, y1 + 0.05 * span

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            ml + (x - x0) / (x1 - x0) * (w - ml - mr),
            h - mb - (y - y0) / (y1 - y0) * (h - mt - mb),
        )

    d.line([(ml, mt), (ml, h - mb), (w - mr, h - mb)], fill="black")
    for x in sorted(set(xs)):
        X, _ = px(x, y0)
        d.line([(X, h - mb), (X, h - mb + 4)], fill="black")
        d.text((X - 4, h - mb + 6), f"{x:g}", fill="black", font=font)
    decimals = max(0, 1 - math.floor(math.log10((y1 - y0) / 4)))
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        _, Y = px(x0, y)
        d.line([(ml - 4, Y), (ml, Y)], fill="black")
        d.text((4, Y - 5), f"{y:.{decimals}f}", fill="black", font=font)
    d.text(((ml + w - mr) // 2 - 20, h - 18), xlabel, fill="black", font=font)
    d.text((4, mt - 20), ylabel, fill="black", font=font)
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        line = [px(x, y) for x, y in sorted(s) if y == y]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for X, Y in line:
            d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=color)
        ly = mt + 16 * i
        d.line([(w - mr + 10, ly + 6), (w - mr + 30, ly + 6)], fill=color, width=3)
        d.text((w - mr + 35, ly), name, fill="black", font=font)
    _save(img, path)
