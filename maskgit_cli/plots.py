"""Figures for reports, drawn with Pillow only (no plotting dependency): a chart of a metric
against the sweet spot with error bars, and labelled grids of images.

Everything is drawn at 3x and scaled down with a Lanczos filter, so lines and text are
antialiased; axis ticks fall on round numbers (1, 2, 2.5, 5 x 10^k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
SS = 3  # supersampling: draw at 3x, scale down


def _font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font (at its default 10 px the spaces all but vanish)."""
    return ImageFont.load_default(size=size)


def _save(img: Image.Image, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Ticks on round numbers (1, 2, 2.5, 5 x 10^k) inside [lo, hi], as close to n as they come."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    mag = 10 ** math.floor(math.log10((hi - lo) / n))
    steps = [m * mag for m in (1, 2, 2.5, 5, 10, 20, 25, 50)]
    step = min(
        steps, key=lambda st: abs(math.floor(hi / st + 1e-9) - math.ceil(lo / st - 1e-9) + 1 - n)
    )
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


@dataclass
class Series:
    name: str
    points: list[tuple[float, float, float | None]]  # (x, y, error bar half-width or None)
    reference: bool = False  # a flat line: the same value at every x (a reference fill)


def chart(
    series: list[Series],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (720, 460),
) -> None:
    """A metric against x, one line per series with error bars, references as dashed lines. When
    every series has one x only (one sweet spot), the series go along the x axis instead."""
    W, H = size[0] * SS, size[1] * SS
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(14 * SS), _font(12 * SS)
    legend_w = int(max((font.getlength(s.name) for s in series), default=0)) + 50 * SS
    ml, mr, mt, mb = 80 * SS, legend_w + 20 * SS, 45 * SS, 60 * SS
    d.text((ml, 12 * SS), title, fill="black", font=font)
    lines = [s for s in series if not s.reference]
    single = lines and all(len({p[0] for p in s.points}) <= 1 for s in lines)
    if single:  # categorical: one position per series
        lines = [Series(s.name, [(i, *s.points[0][1:])]) for i, s in enumerate(lines) if s.points]
    pts = [(x, y, e) for s in lines for x, y, e in s.points if y == y]
    refs = [s for s in series if s.reference and s.points and s.points[0][1] == s.points[0][1]]
    if not pts and not refs:
        d.text((ml, H // 2), "no data", fill="black", font=font)
        _save(img.resize(size, Image.LANCZOS), path)
        return
    ys = (
        [y + (e or 0) for _, y, e in pts]
        + [y - (e or 0) for _, y, e in pts]
        + [s.points[0][1] for s in refs]
    )
    xs = [x for x, _, _ in pts] or [0.0]
    x0, x1 = min(xs), max(xs)
    pad = 0.5 if single or x1 == x0 else (x1 - x0) * 0.05
    x0, x1 = x0 - pad, x1 + pad
    y0, y1 = min(ys), max(ys)
    span = (y1 - y0) or max(abs(y1), 1.0) * 0.1
    y0, y1 = y0 - 0.08 * span, y1 + 0.08 * span

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            ml + (x - x0) / (x1 - x0) * (W - ml - mr),
            H - mb - (y - y0) / (y1 - y0) * (H - mt - mb),
        )

    for t in nice_ticks(y0, y1):  # horizontal grid and y ticks
        _, Y = px(x0, t)
        d.line([(ml, Y), (W - mr, Y)], fill=(230, 230, 230), width=SS)
        text = _label(t)
        d.text((ml - 8 * SS - small.getlength(text), Y - 7 * SS), text, fill="black", font=small)
    d.line([(ml, mt), (ml, H - mb), (W - mr, H - mb)], fill="black", width=SS)
    if single:
        for i, s in enumerate(lines):
            X, _ = px(i, y0)
            text = s.name
            d.text((X - small.getlength(text) / 2, H - mb + 8 * SS), text, fill="black", font=small)
    else:
        for x in sorted(set(xs)):
            X, _ = px(x, y0)
            d.line([(X, H - mb), (X, H - mb + 5 * SS)], fill="black", width=SS)
            d.text(
                (X - small.getlength(_label(x)) / 2, H - mb + 8 * SS),
                _label(x),
                fill="black",
                font=small,
            )
    d.text(
        ((ml + W - mr) / 2 - font.getlength(xlabel) / 2, H - 26 * SS),
        xlabel,
        fill="black",
        font=font,
    )
    vertical = Image.new("RGBA", (int(font.getlength(ylabel)) + 4, 20 * SS), (255, 255, 255, 0))
    ImageDraw.Draw(vertical).text((2, 0), ylabel, fill="black", font=font)
    vertical = vertical.rotate(90, expand=True)
    img.paste(vertical, (6 * SS, int((mt + H - mb) / 2 - vertical.height / 2)), vertical)
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        ly = mt + 22 * SS * i
        if s.reference:
            if not s.points or s.points[0][1] != s.points[0][1]:
                continue
            _, Y = px(x0, s.points[0][1])
            for a in range(ml, W - mr, 16 * SS):  # dashed
                d.line([(a, Y), (min(a + 9 * SS, W - mr), Y)], fill=color, width=2 * SS)
            d.line(
                [(W - mr + 12 * SS, ly + 8 * SS), (W - mr + 34 * SS, ly + 8 * SS)],
                fill=color,
                width=2 * SS,
            )
        else:
            line = next((ln for ln in lines if ln.name == s.name), None)
            if line is None:
                continue
            xy = [(px(x, y), e, y) for x, y, e in sorted(line.points) if y == y]
            if len(xy) > 1:
                d.line([p for p, _, _ in xy], fill=color, width=2 * SS, joint="curve")
            for (X, Y), e, y in xy:
                if e:
                    _, top = px(0, y + e)
                    _, bottom = px(0, y - e)
                    d.line([(X, top), (X, bottom)], fill=color, width=2 * SS)
                    for yy in (top, bottom):
                        d.line([(X - 5 * SS, yy), (X + 5 * SS, yy)], fill=color, width=2 * SS)
                r = 4 * SS
                d.ellipse([X - r, Y - r, X + r, Y + r], fill=color)
            d.line(
                [(W - mr + 12 * SS, ly + 8 * SS), (W - mr + 34 * SS, ly + 8 * SS)],
                fill=color,
                width=3 * SS,
            )
        d.text((W - mr + 40 * SS, ly), s.name, fill="black", font=font)
    _save(img.resize(size, Image.LANCZOS), path)


def image_grid(
    rows: list[list[torch.Tensor]],
    path: Path,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    captions: list[list[str]] | None = None,
    scale: int = 2,
    pad: int = 6,
) -> None:
    """Rows of uint8 (3, H, W) images -> one labelled PNG: column titles on top, a label left of
    each row, a caption under each image (`captions`, row by row)."""
    font = _font(13)
    H, W = rows[0][0].shape[1] * scale, rows[0][0].shape[2] * scale
    left = (
        pad
        + int(max((font.getlength(t) for t in row_labels or []), default=0))
        + (pad if row_labels else 0)
    )
    top = 20 if col_labels else pad
    cap = 17 if captions else 0
    cols = max(len(r) for r in rows)
    cell_w = max(W, int(max((font.getlength(c) for r in captions or [] for c in r), default=0)) + 4)
    canvas = Image.new(
        "RGB",
        (left + cols * (cell_w + pad) + pad, top + len(rows) * (H + cap + pad) + pad),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        x = left + j * (cell_w + pad) + (cell_w - font.getlength(label)) / 2
        draw.text((x, 3), label, fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + i * (H + cap + pad)
        if row_labels:
            draw.text((pad, y + H // 2 - 7), row_labels[i], fill="black", font=font)
        for j, img in enumerate(row):
            x = left + j * (cell_w + pad) + (cell_w - W) // 2
            tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((W, H), Image.NEAREST)
            canvas.paste(tile, (x, y))
            if captions and captions[i][j]:
                text = captions[i][j]
                draw.text(
                    (left + j * (cell_w + pad) + (cell_w - font.getlength(text)) / 2, y + H + 2),
                    text,
                    fill=(60, 60, 60),
                    font=font,
                )
    _save(canvas, path)
