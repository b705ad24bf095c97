"""Image folders <-> tensors, pixel masks -> token masks, token files.

Conventions (the course lab's): masks are 8-bit grayscale with 0 = missing, 255 = known; masked
images have missing pixels set to gray. Files are sorted by name; the format is detected from the
bytes, because the lab's ".png" files are JPEGs.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from maskgit_cli.config import DataConfig
from maskgit_cli.errors import DataError, OutputExistsError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files of a folder; a missing or empty folder or a stray file is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files, strays = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        (files if p.suffix.lower() in IMAGE_SUFFIXES else strays).append(p)
    if strays:
        raise DataError(
            f"{strays[0]}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"move it out of {folder}" + (f" (and {len(strays) - 1} more)" if len(strays) > 1 else "")
        )
    if not files:
        raise DataError(f"no images in {folder}: put .png/.jpg files there")
    return files


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)  # PIL detects the format from the bytes, not the name
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot read this image ({err.__class__.__name__}); "
                        "replace or remove the file") from None


def read_image(path: Path, size: int, resize: bool = False, hint: str | None = None) -> np.ndarray:
    """One image as uint8 (H, W, 3). `hint`: what to do about another size (default: --resize)."""
    img = _open(path).convert("RGB")
    if img.size != (size, size):
        if not resize:
            raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, expected "
                            f"{size}x{size}; {hint or 'pass --resize to resize it'}")
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_images(paths: list[Path], size: int, resize: bool = False, hint: str | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W)."""
    arr = np.stack([read_image(p, size, resize, hint) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def load_folder(folder: str | Path, size: int, resize: bool = False) -> tuple[torch.Tensor, list[str]]:
    paths = list_images(folder)
    return load_images(paths, size, resize), [p.name for p in paths]


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


# ---------------------------------------------------------------------------------- masks


def read_mask(path: Path, size: int, missing: str = "black") -> torch.Tensor:
    """bool (H, W), True where the pixel is missing. missing='black': 0 = missing (the lab's)."""
    img = _open(path).convert("L")
    if img.size != (size, size):
        raise DataError(f"{path}: mask is {img.size[0]}x{img.size[1]}, expected {size}x{size}; "
                        "masks must match their images")
    arr = np.asarray(img)
    return torch.from_numpy(arr < 128 if missing == "black" else arr >= 128)


def token_mask(missing: torch.Tensor, grid: int, rule: str = "any", dilate: int = 0) -> torch.Tensor:
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
    if dilate > 0:
        k = 2 * dilate + 1
        out = F.max_pool2d(out.float().unsqueeze(1), k, stride=1, padding=dilate).squeeze(1) > 0
    return out


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
    for key in (lambda p: p.name, lambda p: _base(p.name), lambda p: _digits(p.name), lambda p: _number(p.name)):
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
                raise DataError(f"ambiguous pairing of images and {what}s ({names}): rename them so that each "
                                f"image has one {what} of the same name")
            pairs[imgs[0]] = cands[0]
            free.discard(cands[0])
    unpaired = [p.name for p in images if p not in pairs]
    if unpaired:
        shown = ", ".join(unpaired[:5]) + (f" (+{len(unpaired) - 5} more)" if len(unpaired) > 5 else "")
        raise DataError(f"no {what} in {where} for: {shown}; {what}s pair with images by name or by number")
    return Pairing(pairs=[(p, pairs[p]) for p in images], unused=sorted(free))


def pair_masks(image_dir: str | Path, mask_dir: str | Path) -> Pairing:
    """Pair masked images with masks (see pair_files); lab: image_000.png <-> mask_000.png."""
    return pair_files(list_images(image_dir), list_images(mask_dir), "mask", mask_dir)


def mask_out(images_u8: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) with the missing pixels ((..., H, W) bool) gray 128, as
    `maskgit mask` writes them."""
    return torch.where(missing.unsqueeze(-3), torch.full((), 128, dtype=torch.uint8), images_u8)


def random_region_masks(B: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """bool (B, size, size) holes shaped like inpainting masks: 80 % irregular random-walk blobs
    (a 3x3 brush wandering in steps of up to 2 px, like the lab's and cats64's test masks), 20 %
    boxes; each covers a target fraction drawn from U(10 %, 40 %) of the image, roughly."""
    out = torch.zeros(B, size * size, dtype=torch.bool)
    u = torch.rand(B, 6, generator=generator)
    target = 0.10 + 0.30 * u[:, 0]
    for b in range(B):
        if u[b, 1] < 0.2:  # box with the target area and a random aspect ratio
            area = target[b].item() * size * size
            aspect = 0.5 + u[b, 2].item()
            h = max(1, min(size, round((area * aspect) ** 0.5)))
            w = max(1, min(size, round(area / h)))
            y0, x0 = int((size - h) * u[b, 3]), int((size - w) * u[b, 4])
            out[b].view(size, size)[y0:y0 + h, x0:x0 + w] = True
            continue
        steps = int(target[b].item() * size * size * 0.9)
        moves = torch.randint(-2, 3, (steps, 2), generator=generator)
        start = (size * (0.25 + 0.5 * u[b, 2:4])).long()
        pos = (start + moves.cumsum(0)).clamp(0, size - 1)
        out[b, pos[:, 0] * size + pos[:, 1]] = True
    brushed = F.max_pool2d(out.view(B, 1, size, size).float(), 3, stride=1, padding=1)  # the 3x3 brush
    return brushed[:, 0] > 0


# ---------------------------------------------------------------------------------- files


def usual_mode(directory: bool = False) -> int:
    """The permissions open()/mkdir() would give under the current umask (mkstemp/mkdtemp give 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(img: torch.Tensor, path: Path) -> None:
    """uint8 (3, H, W) or (H, W) -> PNG, atomically."""
    arr = img.cpu().numpy()
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def check_output(path: Path, overwrite: bool) -> None:
    path = Path(path)
    if path.exists() and not overwrite:
        if path.is_dir() and not any(path.iterdir()):
            return
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")


@dataclass
class TokenFile:
    ids: torch.Tensor  # (N, h, w) int64
    files: list[str]
    tokenizer_id: str
    codebook_size: int
    colors: torch.Tensor | None = None  # (N, 3, h, w) each token's mean colour (normalized), for hints

    @property
    def grid(self) -> int:
        return int(self.ids.shape[-1])


def save_tokens(path: Path, tokens: TokenFile) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=tokens.ids.cpu().numpy().astype(np.uint16),
                     files=np.array(tokens.files), tokenizer_id=np.array(tokens.tokenizer_id),
                     grid=np.array(tokens.grid), codebook_size=np.array(tokens.codebook_size),
                     **({"colors": tokens.colors.cpu().numpy().astype(np.float16)} if tokens.colors is not None else {}))
    atomic_write(Path(path), write)


def load_tokens(path: str | Path) -> TokenFile:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token file not found: {path}; make one with `maskgit encode`")
    try:
        with np.load(path, allow_pickle=False) as z:
            ids = torch.from_numpy(z["ids"].astype(np.int64))
            files = [str(f) for f in z["files"]]
            tok_id = str(z["tokenizer_id"])
            K = int(z["codebook_size"])
            colors = torch.from_numpy(z["colors"].astype(np.float32)) if "colors" in z else None
    except KeyError as err:
        raise DataError(f"{path}: not a maskgit token file (missing {err}); "
                        "re-create it with `maskgit encode`") from None
    except Exception as err:  # zip/pickle/format errors of a damaged file
        raise DataError(f"{path}: corrupt token file ({err.__class__.__name__}); "
                        "re-create it with `maskgit encode`") from None
    if ids.ndim != 3 or ids.shape[0] == 0:
        raise DataError(f"{path}: token file holds no token grids; re-create it with `maskgit encode`")
    if int(ids.max()) >= K:
        raise DataError(f"{path}: ids exceed the codebook size {K}; the file is corrupt")
    if colors is not None and colors.shape != (ids.shape[0], 3, *ids.shape[1:]):
        raise DataError(f"{path}: colours {tuple(colors.shape)} do not fit ids {tuple(ids.shape)}; the file is corrupt")
    return TokenFile(ids=ids, files=files, tokenizer_id=tok_id, codebook_size=K, colors=colors)
