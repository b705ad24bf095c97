"""Image and mask files <-> tensors: the one reader every command uses, and token masks.

Reading an image: the format from its bytes (the lab's ".png" files are JPEGs), its size checked
from the header before anything is decoded (MAX_PIXELS), EXIF orientation applied (pixels as
viewers show them), 16-bit and float images brought to 8 bits, everything as RGB uint8.

Masks (the course lab's convention): 0 = missing, 255 = known, or `missing="white"`. Any
two-valued mask reads the same way, whatever its two values (0/1, 0/100, 0/255), its channel
(gray, red only) or whether it lives in the alpha channel; a file that is not two-valued (a
photo) is refused. Masked images have their missing pixels gray 128 (`mask_out`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from maskgit_cli.config import DataConfig
from maskgit_cli.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAX_PIXELS = 8192 * 8192  # larger images are refused from their header, before decoding
GRAY = 128  # what `maskgit mask` (and the lab) put in the missing pixels


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files of a folder; a missing or empty folder or a stray file is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "not found"
        raise DataError(f"image folder {what}: {folder}")
    from maskgit_cli.outputs import manifest

    records = manifest(folder)[0]  # maskgit's own notes beside its images (inpaint.json, a CSV)
    files, strays = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        elif p.name not in records:
            strays.append(p)
    if strays:
        raise DataError(
            f"{strays[0]}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"move it out of {folder}"
            + (f" (and {len(strays) - 1} more)" if len(strays) > 1 else "")
        )
    if not files:
        raise DataError(f"no images in {folder}: put .png/.jpg files there")
    return files


def output_names(paths: list[Path]) -> list[str]:
    """The file each input image's result is written to (NAME.png), refusing two inputs that
    would land on one name (cat.png and cat.jpg)."""
    names, seen = [], {}
    for p in paths:
        name = f"{p.stem}.png"
        if name in seen:
            raise DataError(
                f"{seen[name].name} and {p.name} in {p.parent} would both be written as {name}; "
                "rename one of them"
            )
        seen[name] = p
        names.append(name)
    return names


def _header(path: Path) -> Image.Image:
    """The image opened lazily: format and size from its header only, refused when larger than
    MAX_PIXELS (Pillow's own bomb check is off here: ours names the size)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(path)  # PIL detects the format from the bytes, not the name
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise DataError(
            f"{path}: image is {w}x{h} ({w * h / 1e6:.0f} megapixels), more than maskgit reads "
            f"({MAX_PIXELS / 1e6:.0f}); downscale it first"
        )
    return img


_UNREADABLE = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
)


def _open(path: Path) -> Image.Image:
    """A decoded image, oriented as viewers show it (EXIF). Its size is checked from the header
    first, so a huge or hostile file costs nothing; Pillow's warnings never reach the user."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = _header(path)
            img.load()
            return ImageOps.exif_transpose(img)
    except _UNREADABLE as err:
        raise DataError(
            f"{path}: cannot read this image ({err.__class__.__name__}); replace or remove the file"
        ) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as viewers show it, from the header (and EXIF) only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _header(path) as img:
                w, h = img.size
                try:
                    orientation = img.getexif().get(0x0112, 1)
                except _UNREADABLE:
                    orientation = 1
    except _UNREADABLE as err:
        raise DataError(
            f"{path}: cannot read this image ({err.__class__.__name__}); replace or remove the file"
        ) from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _planes(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB float (H, W, 3) in [0, 1], alpha (H, W) in [0, 1] or None) at any bit depth."""
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        else:  # 16-bit (or 32-bit integer) gray: full range is 65535 unless the values are 8-bit
            top = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
        gray = np.clip(arr / top, 0, 1)
        return np.repeat(gray[..., None], 3, axis=2), None
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].astype(np.float64) / 255
        return np.asarray(rgba)[..., :3].astype(np.float64) / 255, alpha
    return np.asarray(img.convert("RGB")).astype(np.float64) / 255, None


def _rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
        return np.array(img.convert("RGB"), dtype=np.uint8)
    rgb, _ = _planes(img)
    return np.round(rgb * 255).astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    """One image at its own size as uint8 (H, W, 3)."""
    return _rgb8(_open(path))


def read_image(path: Path, size: int, resize: bool = False, hint: str | None = None) -> np.ndarray:
    """One image as uint8 (size, size, 3). `hint`: what to do about another size (default:
    --resize)."""
    img = _open(path)
    if img.size != (size, size):
        if not resize:
            raise DataError(
                f"{path}: image is {img.size[0]}x{img.size[1]}, expected "
                f"{size}x{size}; {hint or 'pass --resize to resize it'}"
            )
        img = img.convert("RGB").resize((size, size), Image.BICUBIC)
    return _rgb8(img)


def load_images(
    paths: list[Path],
    size: int,
    resize: bool = False,
    hint: str | None = None,
    on_progress=None,
) -> torch.Tensor:
    """uint8 (N, 3, H, W). on_progress(done, total) every 100 images and at the end."""
    arrays = []
    for i, p in enumerate(paths):
        arrays.append(read_image(p, size, resize, hint))
        if on_progress and ((i + 1) % 100 == 0 or i + 1 == len(paths)):
            on_progress(i + 1, len(paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_folder(
    folder: str | Path, size: int, resize: bool = False, on_progress=None
) -> tuple[torch.Tensor, list[str]]:
    paths = list_images(folder)
    return load_images(paths, size, resize, on_progress=on_progress), [p.name for p in paths]


def normalize(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float model input."""
    mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def denormalize(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Model output -> float in [0, 1] (with the lab's separate output statistics if set)."""
    mean = torch.tensor(cfg.denorm_mean or cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.denorm_std or cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    return (x01 * 255.0).round().clamp(0, 255).to(torch.uint8)


SOFTWARE = "maskgit"  # the PNG text chunk every image maskgit writes carries (its signature)


def save_png(img: torch.Tensor, path: Path) -> None:
    """uint8 (3, H, W) or (H, W) -> PNG, atomically, signed as maskgit's."""
    from PIL import PngImagePlugin

    from maskgit_cli.outputs import atomic_write

    arr = img.cpu().numpy()
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info))


def is_maskgit_png(path: Path) -> bool:
    """The file is a PNG maskgit wrote (its Software text chunk says so)."""
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and str(img.info.get("Software", "")).startswith(SOFTWARE)
    except (OSError, ValueError, SyntaxError):
        return False


# ---------------------------------------------------------------------------------- masks

MISSING = ("black", "white")


def mask_plane(img: Image.Image) -> np.ndarray:
    """The one plane a mask file encodes (H, W) in [0, 1]: the colour's brightest channel (so a
    red-only mask reads like a gray one), or the alpha channel when the colour is uniform."""
    rgb, alpha = _planes(img)
    if alpha is not None and np.ptp(rgb) == 0 and np.ptp(alpha) > 0:
        return alpha
    return rgb.max(axis=2)


def read_mask(
    path: Path, size: int | tuple[int, int] | None = None, missing: str = "black"
) -> torch.Tensor:
    """bool (H, W), True where the pixel is missing. missing='black': the darker of the mask's two
    values is missing (0 = missing, the lab's); 'white': the brighter one. `size`: the size the
    mask must have (an int for a square), or None."""
    img = _open(path)
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)
        if img.size != want:
            raise DataError(
                f"{path}: mask is {img.size[0]}x{img.size[1]}, expected {want[0]}x{want[1]}; "
                "masks must match their images"
            )
    return holes(mask_plane(img), missing, str(path))


def holes(plane: np.ndarray, missing: str = "black", name: str = "mask") -> torch.Tensor:
    """A mask's one plane (H, W), any scale, -> bool (H, W), True = missing: the darker of its two
    levels under 'black', the brighter under 'white'. A plane that is not two-valued is refused."""
    plane = np.asarray(plane, dtype=np.float64)
    lo, hi = float(plane.min()), float(plane.max())
    if hi == lo:  # one value: black means all missing (under 'black'); anything else all known
        whole = (lo == 0) == (missing == "black")
        return torch.full(plane.shape, whole, dtype=torch.bool)
    band = (plane - lo) / (hi - lo)
    between = float(((band > 0.25) & (band < 0.75)).mean())
    if between > 0.1:
        raise DataError(
            f"{name}: not a mask: {between:.0%} of its pixels are neither of its two levels "
            "(a photo?); masks are two-valued images, 0 = missing, 255 = known"
        )
    hole = band < 0.5 if missing == "black" else band >= 0.5
    return torch.from_numpy(hole)


def check_mask_orientation(
    masked_u8: torch.Tensor, missing: torch.Tensor, mask_path: Path, flag: str
) -> None:
    """A masked image is flat gray exactly where its holes are. If the gray sits where the mask
    says "known" instead, the mask is inverted (white = hole, the convention of diffusers and
    LaMa): refuse it, naming the flag that reads it the other way. masked_u8 (3, H, W), missing (H,
    W)."""
    gray = (masked_u8 == GRAY).all(0)
    known = ~missing
    if known.sum() < 16 or missing.sum() == 0:
        return
    if gray[known].float().mean() > 0.9 and gray[missing].float().mean() < 0.5:
        raise DataError(
            f"{mask_path}: this mask looks inverted: its image is flat gray where the mask says "
            f"known and not where it says missing; pass {flag} if white marks the hole"
        )


def token_mask(
    missing: torch.Tensor, grid: int, rule: str = "any", dilate: int = 0
) -> torch.Tensor:
    """Pixel mask (B, H, W) bool -> token mask (B, h, w) bool, True = token to be generated.

    any: a token is masked if any of its pixels is missing (the lab's rule, never leaves a
    missing pixel inside a "known" token); all: only fully missing tokens; majority: more than
    half. Dilation grows the token mask by `dilate` tokens (a square neighbourhood).
    """
    frac = F.adaptive_avg_pool2d(missing.float().unsqueeze(1), grid).squeeze(1)
    if rule == "any":
        out = frac > 0
    elif rule == "all":
        out = frac >= 1.0
    elif rule == "majority":
        out = frac > 0.5
    else:
        raise DataError(f"unknown token-mask rule '{rule}' (any, all, majority)")
    dilate = min(dilate, grid)  # beyond the grid every token is reached anyway
    if dilate > 0:
        k = 2 * dilate + 1
        out = F.max_pool2d(out.float().unsqueeze(1), k, stride=1, padding=dilate).squeeze(1) > 0
    return out


def mask_out(images_u8: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) with the missing pixels ((..., H, W) bool) gray 128, as
    `maskgit mask` writes them."""
    return torch.where(missing.unsqueeze(-3), torch.full((), GRAY, dtype=torch.uint8), images_u8)


def random_region_masks(
    B: int, size: int | tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """bool (B, H, W) holes shaped like inpainting masks: 80 % irregular random-walk blobs (a
    3x3 brush wandering in steps of up to 2 px, like the lab's and cats64's test masks), 20 %
    boxes; each covers a target fraction drawn from U(10 %, 40 %) of the image, roughly, and at
    least one pixel. `size`: H = W, or (H, W)."""
    H, W = (size, size) if isinstance(size, int) else size
    out = torch.zeros(B, H * W, dtype=torch.bool)
    u = torch.rand(B, 6, generator=generator)
    target = 0.10 + 0.30 * u[:, 0]
    extent = torch.tensor([H, W])
    for b in range(B):
        if u[b, 1] < 0.2:  # box with the target area and a random aspect ratio
            area = target[b].item() * H * W
            aspect = 0.5 + u[b, 2].item()
            h = max(1, min(H, round((area * aspect) ** 0.5)))
            w = max(1, min(W, round(area / h)))
            y0, x0 = int((H - h) * u[b, 3]), int((W - w) * u[b, 4])
            out[b].view(H, W)[y0 : y0 + h, x0 : x0 + w] = True
            continue
        steps = max(1, int(target[b].item() * H * W * 0.9))
        moves = torch.randint(-2, 3, (steps, 2), generator=generator)
        start = (extent * (0.25 + 0.5 * u[b, 2:4])).long()
        pos = torch.minimum((start + moves.cumsum(0)).clamp(min=0), extent - 1)
        out[b, pos[:, 0] * W + pos[:, 1]] = True
    brushed = F.max_pool2d(out.view(B, 1, H, W).float(), 3, stride=1, padding=1)  # the 3x3 brush
    return brushed[:, 0] > 0
