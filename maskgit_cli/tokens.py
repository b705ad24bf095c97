"""Token files: the token grids of an image folder, as `maskgit encode` writes them.

tokens.npz: ids (N, h, w) uint16 (uint32 for more than 65,536 codes), files (N,),
            tokenizer_id, codebook_size, grid, colors (N, 3, h, w) float16, written_by
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskgit_cli.errors import DataError
from maskgit_cli.outputs import atomic_write, npz_signature

is_token_file = npz_signature("ids", "files", "tokenizer_id", "codebook_size")  # maskgit wrote it


@dataclass
class TokenFile:
    ids: torch.Tensor  # (N, h, w) int64
    files: list[str]
    tokenizer_id: str
    codebook_size: int
    # (N, 3, h, w): each token's mean colour (normalized), for hints
    colors: torch.Tensor | None = None
    # what the encoder ran in: bf16 and fp32 tokens may differ here and there
    precision: str = "fp32"

    @property
    def grid(self) -> int:
        return int(self.ids.shape[-1])


def id_dtype(codebook_size: int) -> type:
    """The smallest unsigned type that holds every id of a K-code codebook."""
    return np.uint16 if codebook_size <= 2**16 else np.uint32


def write_tokens(path: Path, tokens: TokenFile) -> None:
    """Write a token file to `path` as it is (callers make the write atomic)."""
    ids = tokens.ids.cpu()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= tokens.codebook_size):
        raise DataError(f"{path}: ids outside [0, {tokens.codebook_size}); not written")
    with open(path, "wb") as fh:
        np.savez(
            fh,
            ids=ids.numpy().astype(id_dtype(tokens.codebook_size)),
            files=np.array(tokens.files),
            tokenizer_id=np.array(tokens.tokenizer_id),
            grid=np.array(tokens.grid),
            codebook_size=np.array(tokens.codebook_size),
            written_by=np.array("maskgit"),
            precision=np.array(tokens.precision),
            **(
                {"colors": tokens.colors.cpu().numpy().astype(np.float16)}
                if tokens.colors is not None
                else {}
            ),
        )


def save_tokens(path: Path, tokens: TokenFile) -> None:
    """Write a token file atomically."""
    atomic_write(Path(path), lambda tmp: write_tokens(tmp, tokens))


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
            prec = str(z["precision"]) if "precision" in z else "fp32"
    except KeyError as err:
        raise DataError(
            f"{path}: not a maskgit token file (missing {err}); re-create it with `maskgit encode`"
        ) from None
    except Exception as err:  # zip/pickle/format errors of a damaged file
        raise DataError(
            f"{path}: corrupt token file ({err.__class__.__name__}); "
            "re-create it with `maskgit encode`"
        ) from None
    if ids.ndim != 3 or ids.shape[0] == 0:
        raise DataError(
            f"{path}: token file holds no token grids; re-create it with `maskgit encode`"
        )
    if K < 2 or int(ids.min()) < 0 or int(ids.max()) >= K:
        raise DataError(
            f"{path}: ids outside [0, {K}) (the codebook size); the file is corrupt, re-create it "
            "with `maskgit encode`"
        )
    if len(files) != ids.shape[0]:
        raise DataError(
            f"{path}: {len(files)} file names for {ids.shape[0]} token grids; the file is corrupt"
        )
    if colors is not None and colors.shape != (ids.shape[0], 3, *ids.shape[1:]):
        raise DataError(
            f"{path}: colours {tuple(colors.shape)} do not fit ids {tuple(ids.shape)}; the file is "
            "corrupt"
        )
    return TokenFile(
        ids=ids, files=files, tokenizer_id=tok_id, codebook_size=K, colors=colors, precision=prec
    )


@torch.no_grad()
def encode_images(
    model,
    images: torch.Tensor,
    cfg,
    device: torch.device,
    batch_size: int = 64,
    on_progress=None,
    precision=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> (ids (N, h, w), each token's mean colour (N, 3, h, w), normalized),
    batched. The model is already in its inference precision; `precision` adds its autocast."""
    import contextlib

    from maskgit_cli import data
    from maskgit_cli.harmonic import token_colors

    ids, colors = [], []
    for i in range(0, len(images), batch_size):
        x = data.normalize(images[i : i + batch_size].to(device), cfg.data)
        with precision.inference_autocast() if precision is not None else contextlib.nullcontext():
            ids.append(model.encode(x).cpu())
        colors.append(token_colors(x, ids[-1].shape[-1]).cpu())
        if on_progress:
            on_progress(min(i + batch_size, len(images)), len(images))
    return torch.cat(ids), torch.cat(colors)


def run_tokens(
    path: str | Path,
    split: str,
    *,
    cfg,
    tok_model,
    tok_id: str,
    run_dir: Path,
    device: torch.device,
    resize: bool,
    precision,
    rank: int = 0,
    flips: bool = False,
    on_progress=None,
) -> TokenFile:
    """Stage 2's tokens (ids (M, h, w) and token colours) from a token file, or from an image
    folder encoded once and cached in RUN/tokens_<split>.npz (with horizontally flipped copies
    for training). The cache is reused while the images, the tokenizer and the precision the
    encoder runs in are the same."""
    from maskgit_cli import data
    from maskgit_cli.errors import ConfigError

    path = Path(path)
    if path.is_file():
        tokens = load_tokens(path)
        if tokens.tokenizer_id != tok_id:
            raise DataError(
                f"{path} was encoded by tokenizer {tokens.tokenizer_id}, not by the run's "
                f"tokenizer {tok_id}; re-encode it with `maskgit encode --tokenizer {run_dir}`"
            )
    else:
        cache = run_dir / f"tokens_{split}.npz"
        paths = data.list_images(path)
        names = [p.name for p in paths] + ([f"flip:{p.name}" for p in paths] if flips else [])
        tokens = load_tokens(cache) if cache.exists() else None
        if (
            tokens is None
            or tokens.tokenizer_id != tok_id
            or tokens.files != names
            or tokens.colors is None
            or tokens.precision != precision.name
        ):
            images = data.load_images(paths, cfg.data.image_size, resize)
            if flips:
                images = torch.cat([images, images.flip(-1)])
            ids, colors = encode_images(
                tok_model, images, cfg, device, on_progress=on_progress, precision=precision
            )
            tokens = TokenFile(
                ids=ids,
                files=names,
                tokenizer_id=tok_id,
                codebook_size=tok_model.codebook_size,
                colors=colors,
                precision=precision.name,
            )
            if rank == 0:
                save_tokens(cache, tokens)
    if tokens.codebook_size != cfg.tokenizer.codebook_size:
        raise ConfigError(
            f"{path}: tokens index {tokens.codebook_size} codes but the config says "
            f"tokenizer.codebook_size={cfg.tokenizer.codebook_size}"
        )
    if tokens.grid != cfg.grid:
        raise ConfigError(
            f"{path}: token grid is {tokens.grid}x{tokens.grid} but the config's is "
            f"{cfg.grid}x{cfg.grid}"
        )
    if cfg.transformer.hint and tokens.colors is None:
        raise DataError(
            f"{path}: has no token colours, which transformer.hint needs; re-encode it with "
            "`maskgit encode` (this version stores them)"
        )
    return tokens
