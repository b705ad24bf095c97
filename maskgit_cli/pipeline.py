"""The commands as plain functions over paths, returning result dataclasses. No printing:
progress goes out through callbacks, errors as MaskgitError."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from maskgit_cli import checkpoint, config, data, runtime
from maskgit_cli import train as training
from maskgit_cli.config import Config
from maskgit_cli.errors import ConfigError, DataError

Progress = Callable[[int, int], None] | None


def resolve_config(config_path: str | Path | None, overrides: list[str] | None, stage: str | None = None,
                   epochs: int | None = None, max_steps: int | None = None,
                   batch_size: int | None = None) -> Config:
    """Defaults <- CONFIG <- --set <- the dedicated flags (--epochs, --max-steps, --batch-size)."""
    extra = list(overrides or [])
    if stage is not None:
        section = f"{stage}_train"
        for key, value in (("epochs", epochs), ("max_steps", max_steps), ("batch_size", batch_size)):
            if value is not None:
                extra.append(f"{section}.{key}={value}")
    return config.load(config_path, extra)


# ---------------------------------------------------------------------------------- train


def train(config_path: str | Path, stage: str, data_path: str | Path, out: str | Path, *,
          val: str | Path | None = None, overrides: list[str] | None = None, epochs: int | None = None,
          max_steps: int | None = None, batch_size: int | None = None, resume: bool = False, seed: int = 0,
          device: str = "auto", resize: bool = False, tokenizer: str | Path | None = None,
          compile: bool = False, overwrite: bool = False,
          on_step=None, on_epoch=None, on_status: Callable[[str], None] | None = None):
    if stage not in ("tokenizer", "transformer"):
        raise ConfigError(f"--stage must be 'tokenizer' or 'transformer', got '{stage}'")
    cfg = resolve_config(config_path, overrides, stage, epochs, max_steps, batch_size)
    out = Path(out)
    dev = runtime.resolve_device(device)
    ckpt_name = checkpoint.TOKENIZER if stage == "tokenizer" else checkpoint.TRANSFORMER
    if resume:
        if not (out / ckpt_name).exists():
            raise DataError(f"--resume: no {ckpt_name} in {out} to resume from")
        _check_resumable(out / ckpt_name, cfg)
    elif (out / ckpt_name).exists() and not overwrite:
        raise DataError(f"{out / ckpt_name} already exists; pass --resume to continue it or --overwrite to restart")
    if stage == "tokenizer":
        status = on_status or (lambda _msg: None)
        status(f"loading images from {data_path}")
        images, _ = data.load_folder(data_path, cfg.data.image_size, resize)
        val_images = data.load_folder(val, cfg.data.image_size, resize)[0] if val else None
        return training.train_tokenizer(cfg, images, out, val_images=val_images, device=dev, seed=seed,
                                     resume=resume, on_step=on_step, on_epoch=on_epoch)
    rank, _world, dev = runtime.init_distributed(dev)
    status = on_status or (lambda _msg: None)
    tok_model, tok_id = _run_tokenizer(cfg, out, tokenizer, dev, rank)
    status("preparing tokens")
    ids = _stage2_tokens(data_path, "train", cfg, tok_model, tok_id, out, dev, resize, rank, flips=cfg.data.hflip)
    val_ids = _stage2_tokens(val, "val", cfg, tok_model, tok_id, out, dev, resize, rank) if val else None
    del tok_model  # the tokenizer never runs inside the training loop
    return training.train_transformer(cfg, ids, out, tokenizer_id=tok_id, val_ids=val_ids, device=dev, seed=seed,
                                      resume=resume, compile=compile, on_step=on_step if rank == 0 else None,
                                      on_epoch=on_epoch if rank == 0 else None)


def _run_tokenizer(cfg: Config, out: Path, tokenizer: str | Path | None, device: torch.device, rank: int):
    """The tokenizer a transformer run uses, copied into RUN_DIR/tokenizer.pt so the run
    directory is self-contained. Returns (model, tokenizer id)."""
    dest = out / checkpoint.TOKENIZER
    src = Path(tokenizer) if tokenizer else dest
    if src.is_dir():
        src = src / checkpoint.TOKENIZER
    if not src.is_file():
        raise DataError(f"no tokenizer at {src}: train one with --stage tokenizer --out {out}, or pass --tokenizer")
    model, tok_cfg, tok_id = checkpoint.load_tokenizer(src, cfg, device)
    if model.codebook_size != cfg.tokenizer.codebook_size:
        raise ConfigError(f"tokenizer {src} has {model.codebook_size} codes but the config says "
                          f"tokenizer.codebook_size={cfg.tokenizer.codebook_size}; fix the config")
    if tok_cfg.grid != cfg.grid or tok_cfg.data.image_size != cfg.data.image_size:
        raise ConfigError(f"tokenizer {src} makes a {tok_cfg.grid}x{tok_cfg.grid} grid from "
                          f"{tok_cfg.data.image_size}px images but the config gives {cfg.grid}x{cfg.grid} "
                          f"from {cfg.data.image_size}px; fix the config")
    if rank == 0 and src.resolve() != dest.resolve():
        if dest.exists():
            existing = checkpoint.load(dest)
            if (existing.get("model_id") or checkpoint.model_id(existing["model"])) != tok_id:
                raise DataError(f"{dest} holds another tokenizer than {src}; use a new --out")
        else:
            sd = model.state_dict()
            checkpoint.save(dest, {"kind": "tokenizer", "config": tok_cfg.to_dict(), "model": sd,
                                   "model_id": tok_id, "step": None, "metrics": {}})
    return model, tok_id


def _stage2_tokens(path: str | Path, split: str, cfg: Config, tok_model, tok_id: str, out: Path,
                   device: torch.device, resize: bool, rank: int, flips: bool = False) -> torch.Tensor:
    """ids (M, h, w) from a token file, or from an image folder encoded once and cached in
    RUN_DIR/tokens_<split>.npz (with horizontally flipped copies for training)."""
    path = Path(path)
    if path.is_file():
        tokens = data.load_tokens(path)
        if tokens.tokenizer_id != tok_id:
            raise DataError(f"{path} was encoded by tokenizer {tokens.tokenizer_id}, not by the run's "
                            f"tokenizer {tok_id}; re-encode it with `maskgit encode --tokenizer {out}`")
    else:
        cache = out / f"tokens_{split}.npz"
        paths = data.list_images(path)
        names = [p.name for p in paths] + ([f"flip:{p.name}" for p in paths] if flips else [])
        tokens = data.load_tokens(cache) if cache.exists() else None
        if tokens is None or tokens.tokenizer_id != tok_id or tokens.files != names:
            images = data.load_images(paths, cfg.data.image_size, resize)
            if flips:
                images = torch.cat([images, images.flip(-1)])
            ids = encode_images(tok_model, images, cfg, device)
            tokens = data.TokenFile(ids=ids, files=names, tokenizer_id=tok_id, codebook_size=tok_model.codebook_size)
            if rank == 0:
                data.save_tokens(cache, tokens)
    if tokens.codebook_size != cfg.tokenizer.codebook_size:
        raise ConfigError(f"{path}: tokens index {tokens.codebook_size} codes but the config says "
                          f"tokenizer.codebook_size={cfg.tokenizer.codebook_size}")
    if tokens.grid != cfg.grid:
        raise ConfigError(f"{path}: token grid is {tokens.grid}x{tokens.grid} but the config's is "
                          f"{cfg.grid}x{cfg.grid}")
    return tokens.ids


_MODEL_SECTIONS = ("data", "tokenizer", "transformer")


def _check_resumable(path: Path, cfg: Config) -> None:
    saved = checkpoint.load(path)["config"] or {}
    now = cfg.to_dict()
    for section in _MODEL_SECTIONS:
        if saved.get(section) != now.get(section):
            raise ConfigError(f"{path}: was trained with a different '{section}' config; resume with the "
                              f"run's own config ({path.parent / 'config.yaml'})")


# --------------------------------------------------------------------------------- encode


@dataclass
class EncodeResult:
    count: int
    grid: int
    codebook_size: int
    codebook_usage: float
    tokenizer_id: str
    out: str
    seconds: float
    images_per_second: float


@torch.no_grad()
def encode_images(model, images: torch.Tensor, cfg: Config, device: torch.device, batch_size: int = 64,
                  on_progress: Progress = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> ids (N, h, w), batched."""
    out = []
    for i in range(0, len(images), batch_size):
        x = data.normalize(images[i:i + batch_size].to(device), cfg.data)
        with runtime.autocast(device):
            out.append(model.encode(x).cpu())
        if on_progress:
            on_progress(min(i + batch_size, len(images)), len(images))
    return torch.cat(out)


def encode(images_dir: str | Path, tokenizer: str | Path, out: str | Path, *, config_path: str | Path | None = None,
           batch_size: int = 64, device: str = "auto", resize: bool = False, overwrite: bool = False,
           on_progress: Progress = None) -> EncodeResult:
    out = Path(out)
    data.check_output(out, overwrite)
    dev = runtime.resolve_device(device)
    fallback = config.load(config_path) if config_path else None
    model, cfg, mid = checkpoint.load_tokenizer(tokenizer, fallback, dev)
    paths = data.list_images(images_dir)
    t0 = time.time()
    images = data.load_images(paths, cfg.data.image_size, resize)
    ids = encode_images(model, images, cfg, dev, batch_size, on_progress)
    K = model.codebook_size
    data.save_tokens(out, data.TokenFile(ids=ids, files=[p.name for p in paths], tokenizer_id=mid, codebook_size=K))
    seconds = time.time() - t0
    usage = torch.unique(ids).numel() / K
    return EncodeResult(count=len(paths), grid=int(ids.shape[-1]), codebook_size=K, codebook_usage=usage,
                        tokenizer_id=mid, out=str(out), seconds=seconds,
                        images_per_second=len(paths) / max(seconds, 1e-9))


def as_dict(result: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(result)
