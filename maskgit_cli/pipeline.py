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
    from maskgit_cli import train_mvtm

    return train_mvtm.run(cfg, data_path, out, val=val, tokenizer=tokenizer, device=dev, seed=seed,
                          resume=resume, resize=resize, compile=compile, on_step=on_step,
                          on_epoch=on_epoch, on_status=on_status)


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
