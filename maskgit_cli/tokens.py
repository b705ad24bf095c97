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
        cache = run_dir / f"tokens_{split}.npz"  # and tokens_<split>.partial.npz while it is made
        paths = data.list_images(path)
        names = [p.name for p in paths] + ([f"flip:{p.name}" for p in paths] if flips else [])
        tokens = load_tokens(cache) if cache.exists() else None
        if not _fits(tokens, names, tok_id, precision.name):
            tokens = _encode_resumably(
                paths,
                names,
                run_dir,
                split,
                cfg=cfg,
                tok_model=tok_model,
                tok_id=tok_id,
                device=device,
                resize=resize,
                precision=precision,
                rank=rank,
                on_progress=on_progress,
            )
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


def partial_name(split: str) -> str:
    return f"tokens_{split}.partial.npz"


def _fits(tokens: TokenFile | None, names: list[str], tok_id: str, precision: str) -> bool:
    """A cached token file holds these images' tokens, from this tokenizer and precision."""
    return (
        tokens is not None
        and tokens.tokenizer_id == tok_id
        and tokens.files == names
        and tokens.colors is not None
        and tokens.precision == precision
    )


CHUNK = 512  # images encoded between two chances to keep what is done


def _encode_resumably(
    paths,
    names,
    run_dir: Path,
    split: str,
    *,
    cfg,
    tok_model,
    tok_id,
    device,
    resize,
    precision,
    rank,
    on_progress,
) -> TokenFile:
    """Encode the images named `names` (a name "flip:X" is X mirrored) chunk by chunk. Ctrl-C
    keeps what is done in RUN/tokens_<split>.partial.npz, and the next run continues there."""
    from maskgit_cli import data

    cache, partial = run_dir / f"tokens_{split}.npz", run_dir / partial_name(split)
    by_name = {p.name: p for p in paths}
    done = load_tokens(partial) if partial.exists() else None
    ids, colors = [], []
    if (
        done is not None
        and done.tokenizer_id == tok_id
        and done.precision == precision.name
        and done.colors is not None
        and done.files == names[: len(done.files)]
    ):
        ids, colors = [done.ids], [done.colors]
    start = sum(len(x) for x in ids)
    K = tok_model.codebook_size

    def keep(upto: int) -> TokenFile:
        return TokenFile(
            ids=torch.cat(ids),
            files=names[:upto],
            tokenizer_id=tok_id,
            codebook_size=K,
            colors=torch.cat(colors),
            precision=precision.name,
        )

    try:
        for i in range(start, len(names), CHUNK):
            chunk = names[i : i + CHUNK]
            images = data.load_images(
                [by_name[n.removeprefix("flip:")] for n in chunk], cfg.data.image_size, resize
            )
            flip = torch.tensor([n.startswith("flip:") for n in chunk]).view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(-1), images)
            chunk_ids, chunk_colors = encode_images(
                tok_model, images, cfg, device, precision=precision
            )
            ids.append(chunk_ids)
            colors.append(chunk_colors)
            if on_progress:
                on_progress(i + len(chunk), len(names))
    except KeyboardInterrupt:
        if rank == 0 and ids:
            save_tokens(partial, keep(sum(len(x) for x in ids)))
        raise
    tokens = keep(len(names))
    if rank == 0:
        save_tokens(cache, tokens)
        partial.unlink(missing_ok=True)
    return tokens
