"""The commands as plain functions over paths, returning result dataclasses. No printing:
progress goes out through callbacks, errors as MaskgitError."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from maskgit_cli import __version__, checkpoint, config, data, runtime
from maskgit_cli import train as training
from maskgit_cli.config import Config
from maskgit_cli.errors import ConfigError, DataError, OutputExistsError

Progress = Callable[[int, int], None] | None


def resolve_config(config_path: str | Path | None, overrides: list[str] | None, stage: str | None = None,
                   epochs: int | None = None, max_steps: int | None = None,
                   batch_size: int | None = None) -> Config:
    """Defaults <- CONFIG <- --set <- the dedicated flags (--epochs, --max-steps, --batch-size),
    each flag checked by its config field's rule under its own name."""
    extra = list(overrides or [])
    if stage is not None:
        section = f"{stage}_train"
        cls = type(getattr(Config(), section))
        for key, value in (("epochs", epochs), ("max_steps", max_steps), ("batch_size", batch_size)):
            if value is not None:
                config.check_value(cls, key, value, "--" + key.replace("_", "-"))
                extra.append(f"{section}.{key}={value}")
    return config.load(config_path, extra)


# ---------------------------------------------------------------------------------- train


# stage 1 (VQGAN), stage 1b (its decoder against a patch GAN, tokens frozen), stage 2 (MVTM)
STAGES = ("tokenizer", "decoder", "transformer")


def train(config_path: str | Path, stage: str, data_path: str | Path, out: str | Path, *,
          val: str | Path | None = None, overrides: list[str] | None = None, epochs: int | None = None,
          max_steps: int | None = None, batch_size: int | None = None, resume: bool = False, seed: int = 0,
          device: str = "auto", resize: bool = False, tokenizer: str | Path | None = None,
          compile: bool = False, overwrite: bool = False,
          on_step=None, on_epoch=None, on_status: Callable[[str], None] | None = None):
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got '{stage}'")
    cfg = resolve_config(config_path, overrides, stage, epochs, max_steps, batch_size)
    out = Path(out)
    dev = runtime.resolve_device(device)
    ckpt_name = checkpoint.TRANSFORMER if stage == "transformer" else checkpoint.TOKENIZER
    if stage == "decoder":
        if not (out / ckpt_name).exists():
            raise DataError(f"no {ckpt_name} in {out} to fine-tune: train one there first "
                            f"(--stage tokenizer --out {out})")
    elif resume:
        if not (out / ckpt_name).exists():
            raise DataError(f"--resume: no {ckpt_name} in {out} to resume from")
    elif (out / ckpt_name).exists() and not overwrite:
        raise DataError(f"{out / ckpt_name} already exists; pass --resume to continue it or --overwrite to restart")
    if stage in ("tokenizer", "decoder"):
        status = on_status or (lambda _msg: None)
        status(f"loading images from {data_path}")
        images, _ = data.load_folder(data_path, cfg.data.image_size, resize)
        val_images = data.load_folder(val, cfg.data.image_size, resize)[0] if val else None
        if stage == "decoder":
            return training.train_decoder(cfg, images, out, val_images=val_images, device=dev, seed=seed,
                                          resume=resume, overwrite=overwrite, on_step=on_step, on_epoch=on_epoch)
        return training.train_tokenizer(cfg, images, out, val_images=val_images, device=dev, seed=seed,
                                     resume=resume, on_step=on_step, on_epoch=on_epoch)
    rank, _world, dev = runtime.init_distributed(dev)
    status = on_status or (lambda _msg: None)
    tok_model, tok_id = _run_tokenizer(cfg, out, tokenizer, dev, rank)
    status("preparing tokens")
    train_tokens = _stage2_tokens(data_path, "train", cfg, tok_model, tok_id, out, dev, resize, rank,
                                  flips=cfg.data.hflip)
    val_tokens = _stage2_tokens(val, "val", cfg, tok_model, tok_id, out, dev, resize, rank) if val else None
    del tok_model  # the tokenizer never runs inside the training loop
    return training.train_transformer(cfg, train_tokens.ids, out, tokenizer_id=tok_id,
                                      colors=train_tokens.colors,
                                      val_ids=val_tokens.ids if val_tokens else None,
                                      val_colors=val_tokens.colors if val_tokens else None, device=dev, seed=seed,
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
            if checkpoint.tokens_id(existing) != tok_id:
                raise DataError(f"{dest} holds another tokenizer than {src}; use a new --out")
        else:
            sd = model.state_dict()
            checkpoint.save(dest, {"kind": "tokenizer", "config": tok_cfg.to_dict(), "model": sd,
                                   "model_id": tok_id, "step": None, "metrics": {}})
    return model, tok_id


def _stage2_tokens(path: str | Path, split: str, cfg: Config, tok_model, tok_id: str, out: Path,
                   device: torch.device, resize: bool, rank: int, flips: bool = False) -> data.TokenFile:
    """Tokens (ids (M, h, w) and token colours) from a token file, or from an image folder encoded
    once and cached in RUN_DIR/tokens_<split>.npz (with horizontally flipped copies for training)."""
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
        if tokens is None or tokens.tokenizer_id != tok_id or tokens.files != names or tokens.colors is None:
            images = data.load_images(paths, cfg.data.image_size, resize)
            if flips:
                images = torch.cat([images, images.flip(-1)])
            ids, colors = encode_images(tok_model, images, cfg, device)
            tokens = data.TokenFile(ids=ids, files=names, tokenizer_id=tok_id, codebook_size=tok_model.codebook_size,
                                    colors=colors)
            if rank == 0:
                data.save_tokens(cache, tokens)
    if tokens.codebook_size != cfg.tokenizer.codebook_size:
        raise ConfigError(f"{path}: tokens index {tokens.codebook_size} codes but the config says "
                          f"tokenizer.codebook_size={cfg.tokenizer.codebook_size}")
    if tokens.grid != cfg.grid:
        raise ConfigError(f"{path}: token grid is {tokens.grid}x{tokens.grid} but the config's is "
                          f"{cfg.grid}x{cfg.grid}")
    if cfg.transformer.hint and tokens.colors is None:
        raise DataError(f"{path}: has no token colours, which transformer.hint needs; re-encode it with "
                        "`maskgit encode` (this version stores them)")
    return tokens


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
                  on_progress: Progress = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> (ids (N, h, w), each token's mean colour (N, 3, h, w), normalized), batched."""
    from maskgit_cli.harmonic import token_colors

    ids, colors = [], []
    for i in range(0, len(images), batch_size):
        x = data.normalize(images[i:i + batch_size].to(device), cfg.data)
        with runtime.autocast(device):
            ids.append(model.encode(x).cpu())
        colors.append(token_colors(x, ids[-1].shape[-1]).cpu())
        if on_progress:
            on_progress(min(i + batch_size, len(images)), len(images))
    return torch.cat(ids), torch.cat(colors)


def encode(images_dir: str | Path, tokenizer: str | Path, out: str | Path, *, config_path: str | Path | None = None,
           batch_size: int = 64, device: str = "auto", resize: bool = False, overwrite: bool = False,
           on_progress: Progress = None) -> EncodeResult:
    out = Path(out)
    check_batch_size(batch_size)
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the token file to write, e.g. {out / 'tokens.npz'}")
    data.check_output(out, overwrite)
    dev = runtime.resolve_device(device)
    fallback = config.load(config_path) if config_path else None
    model, cfg, mid = checkpoint.load_tokenizer(tokenizer, fallback, dev)
    paths = data.list_images(images_dir)
    t0 = time.time()
    images = data.load_images(paths, cfg.data.image_size, resize)
    ids, colors = encode_images(model, images, cfg, dev, batch_size, on_progress)
    K = model.codebook_size
    data.save_tokens(out, data.TokenFile(ids=ids, files=[p.name for p in paths], tokenizer_id=mid, codebook_size=K,
                                         colors=colors))
    seconds = time.time() - t0
    usage = torch.unique(ids).numel() / K
    return EncodeResult(count=len(paths), grid=int(ids.shape[-1]), codebook_size=K, codebook_usage=usage,
                        tokenizer_id=mid, out=str(out), seconds=seconds,
                        images_per_second=len(paths) / max(seconds, 1e-9))


def as_dict(result: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(result)


# -------------------------------------------------------------------------------- inpaint

BUNDLED = Path(__file__).parent / "assets" / "cats64"


def load_model(model: str | Path | None, device: torch.device):
    """(tokenizer, transformer, config) from a run directory, or the bundled cats64 model."""
    if model is None:
        if not (BUNDLED / checkpoint.TRANSFORMER).is_file():
            raise DataError("no --model given and no bundled model in this install; pass --model RUN_DIR")
        model = BUNDLED
    return checkpoint.load_transformer(model, device)


def _fill_of(settings) -> str:
    return (settings.fill if hasattr(settings, "fill") else (settings or {}).get("fill")) or "maskgit"


def _model_label(model: str | Path | None, settings) -> str:
    return "none (harmonic fill)" if settings.fill == "harmonic" else str(model or BUNDLED)


def make_inpainter(model: str | Path | None, settings, device: torch.device, first_image: Path):
    """(Inpainter, image size). The harmonic fill needs no model: it works at the images' own size.
    The oracle fill needs only a tokenizer: a run directory without a transformer will do."""
    from maskgit_cli.inpaint import Inpainter, InpaintSettings

    fill = _fill_of(settings)
    if fill == "harmonic":
        size = data._open(first_image).size[0]
        return Inpainter(None, None, None, InpaintSettings.resolve(config.DecodeConfig(), settings), device), size
    if fill == "oracle" and model is not None and not (Path(model) / checkpoint.TRANSFORMER).is_file():
        tokenizer, cfg, _ = checkpoint.load_tokenizer(Path(model) / checkpoint.TOKENIZER
                                                      if Path(model).is_dir() else model, device=device)
        return Inpainter(tokenizer, None, cfg, InpaintSettings.resolve(cfg.decode, settings), device), \
            cfg.data.image_size
    tokenizer, transformer, cfg = load_model(model, device)
    settings = InpaintSettings.resolve(cfg.decode, settings)
    return Inpainter(tokenizer, transformer, cfg, settings, device), cfg.data.image_size


MANIFEST = ".maskgit-output.json"  # in every output folder: the files maskgit wrote there


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _manifest_files(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # no (readable) manifest: nothing in the folder is known to be ours


class OutputDir:
    """Write into a hidden sibling folder, then swap it in for OUT: all files or none.

    An existing OUT is replaced (with --overwrite) only if it is empty or holds nothing but an
    earlier maskgit output (every file listed in its manifest); a folder with anything else in
    it (a user's notes.txt, their source tree behind `--out .`) is refused, naming the files."""

    def __init__(self, out: Path, overwrite: bool):
        import tempfile

        self.out = Path(out).expanduser().resolve()  # `.` and `a/..` get a real name and parent
        if self.out == self.out.parent:
            raise DataError(f"--out {out}: cannot write into the filesystem root; choose a folder")
        if self.out.exists():
            if not self.out.is_dir():
                raise OutputExistsError(f"--out {out} is a file; give a folder")
            ours = _manifest_files(self.out)
            foreign = [f for f in _files_under(self.out) if f not in ours and f != MANIFEST]
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise OutputExistsError(f"--out {out} holds files maskgit did not write ({shown}); choose a new "
                                        "or empty folder (--overwrite only replaces earlier maskgit output)")
            data.check_output(self.out, overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.tmp.chmod(data.usual_mode(directory=True))

    def commit(self) -> None:
        import shutil

        manifest = {"written_by": f"maskgit {__version__}", "files": _files_under(self.tmp)}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        self.commit() if exc_type is None else self.abort()


@dataclass
class InpaintResult:
    count: int
    seconds: float
    images_per_second: float
    out: str
    settings: dict[str, Any]
    model: str
    transformer_passes: int
    metrics: dict[str, float] | None
    per_image: list[dict[str, Any]]
    unused_masks: int = 0
    warnings: list[str] = field(default_factory=list)


def check_batch_size(n: int) -> int:
    if n < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {n}")
    return n


def inpainting_pairs(masked_dir: str | Path, masks_dir: str | Path) -> tuple[data.Pairing, list[str]]:
    """(image, mask) pairs and warnings: masks that no image claimed are named, not ignored."""
    pairing = data.pair_masks(masked_dir, masks_dir)
    notes = []
    if pairing.unused:
        names = ", ".join(p.name for p in pairing.unused[:3]) + \
            (f" and {len(pairing.unused) - 3} more" if len(pairing.unused) > 3 else "")
        notes.append(f"{len(pairing.unused)} mask(s) in {masks_dir} have no image in {masked_dir}: {names}")
    return pairing, notes


def _size_hint(size: int) -> str:
    return f"the model works on {size}x{size} images: resize the images and their masks to {size}x{size} first"


def _strip(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(images, dim=-1)


def _mask_strip(masks: list[torch.Tensor], size: int) -> torch.Tensor:
    """Token masks (h, w) per step -> one gray strip, white = still masked, upscaled to `size`."""
    tiles = [F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0] for m in masks]
    return data.to_uint8(_strip(tiles))


def inpaint_folder(inpainter, pairs: list[tuple[Path, Path]], out_dir: Path, *, size: int, seed: int,
                   batch_size: int, mask_missing: str = "black", save_steps: bool = False,
                   ground_truth: str | Path | None = None, on_progress: Progress = None
                   ) -> tuple[dict[str, float] | None, list[dict[str, Any]]]:
    """Inpaint every (image, mask) pair into out_dir (same names); per-image metrics with GT."""
    from maskgit_cli import metrics as metrics_mod

    check_batch_size(batch_size)
    gt_paths = _ground_truth_paths(ground_truth, [p for p, _ in pairs]) if ground_truth else None
    per_image: list[dict[str, Any]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        masked = data.load_images([p for p, _ in chunk], size, hint=_size_hint(size))
        missing = torch.stack([data.read_mask(m, size, mask_missing) for _, m in chunk])
        gens = [runtime.image_generator(seed, start + i) for i in range(len(chunk))]
        truth = data.load_images(gt_paths[start:start + len(chunk)], size, hint=_size_hint(size)) \
            if gt_paths is not None else None
        batch = inpainter(masked, missing, gens, record=save_steps, truth_u8=truth)
        for i, (p, _m) in enumerate(chunk):
            data.save_png(batch.images[i], out_dir / f"{p.stem}.png")
            row: dict[str, Any] = {"file": p.name, "missing_fraction": missing[i].float().mean().item(),
                                   "masked_tokens": int(batch.unknown[i].sum()) if batch.unknown is not None else None}
            if save_steps and batch.masks:
                data.save_png(_mask_strip([m[i] for m in batch.masks], size), out_dir / "steps" / f"{p.stem}_mask.png")
                data.save_png(_strip([s[i] for s in batch.step_images]), out_dir / "steps" / f"{p.stem}_steps.png")
            per_image.append(row)
        if truth is not None:
            vals = metrics_mod.all_metrics(batch.images.float() / 255, truth.float() / 255, missing)
            for i in range(len(chunk)):
                per_image[start + i].update({k: v[i].item() for k, v in vals.items()})
        if on_progress:
            on_progress(min(start + batch_size, len(pairs)), len(pairs))
    summary = None
    if gt_paths is not None:
        keys = ["psnr", "ssim", "l1", "psnr_masked", "ssim_masked", "l1_masked"]
        summary = {}
        for k in keys:
            vals = torch.tensor([r[k] for r in per_image], dtype=torch.float64)
            vals = vals[torch.isfinite(vals)]  # an image with no hole has no masked-region value
            summary[k] = vals.mean().item() if len(vals) else None
    return summary, per_image


def _ground_truth_paths(folder: str | Path, images: list[Path]) -> list[Path]:
    """The ground-truth image of each image (same pairing rules as masks; extra ones are fine)."""
    return [g for _, g in data.pair_files(images, data.list_images(folder), "ground-truth image", folder).pairs]


def inpaint(masked_dir: str | Path, masks_dir: str | Path, out: str | Path, *, model: str | Path | None = None,
            settings=None, batch_size: int = 32, seed: int = 0, device: str = "auto",
            mask_missing: str = "black", save_steps: bool = False, ground_truth: str | Path | None = None,
            overwrite: bool = False, on_progress: Progress = None) -> InpaintResult:
    if mask_missing not in ("black", "white"):
        raise ConfigError("--mask-missing must be 'black' (0 = missing, the lab's) or 'white'")
    check_batch_size(batch_size)
    pairing, notes = inpainting_pairs(masked_dir, masks_dir)
    pairs = pairing.pairs
    if ground_truth is None and _fill_of(settings) == "oracle":
        raise ConfigError("--fill oracle needs --ground-truth: it decodes the true images' own tokens")
    dev = runtime.resolve_device(device)
    inpainter, size = make_inpainter(model, settings, dev, pairs[0][0])
    settings = inpainter.s
    t0 = time.time()
    with OutputDir(Path(out), overwrite) as tmp:
        summary, per_image = inpaint_folder(inpainter, pairs, tmp, size=size, seed=seed,
                                            batch_size=batch_size, mask_missing=mask_missing,
                                            save_steps=save_steps, ground_truth=ground_truth,
                                            on_progress=on_progress)
    seconds = time.time() - t0
    return InpaintResult(count=len(pairs), seconds=seconds, images_per_second=len(pairs) / max(seconds, 1e-9),
                         out=str(out), settings=settings.to_dict(), model=_model_label(model, settings),
                         transformer_passes=inpainter.transformer_passes, metrics=summary, per_image=per_image,
                         unused_masks=len(pairing.unused), warnings=notes)


# ------------------------------------------------------------------------------------ fid


def _load_float_images(folder: str | Path) -> list[torch.Tensor]:
    """RGB in [0, 1], any size (each image is resized to 299 inside the network)."""
    out = []
    for p in data.list_images(folder):
        arr = data._open(p).convert("RGB")
        t = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float() / 255
        out.append(t)
    if len({tuple(t.shape) for t in out}) > 1:  # mixed sizes: resize each now, as the network would
        out = [F.interpolate(t[None], size=(299, 299), mode="bilinear", align_corners=False)[0] for t in out]
    return out


def feature_extractor(dims: int, weights: str | Path | None, device: torch.device):
    from maskgit_cli import fid_weights

    return fid_weights.load_inception(dims, weights, device)


def statistics(source: str | Path, extractor, batch_size: int, device: torch.device, on_progress: Progress = None):
    """Stats of an image folder (features kept for KID) or of a saved .npz."""
    from maskgit_cli import fid as fid_mod

    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return fid_mod.Stats.load(source)
    if not source.exists():
        raise DataError(f"not found: {source} (give an image folder or a .npz of statistics)")
    images = _load_float_images(source)
    if len(images) < 2:
        raise DataError(f"{source}: FID needs at least 2 images per set (the covariance of one image is "
                        "undefined); add images")
    return fid_mod.Stats.of(fid_mod.features(images, extractor(), batch_size, device, on_progress))


def fid(a: str | Path, b: str | Path, *, dims: int = 2048, batch_size: int = 50, device: str = "auto",
        inception_weights: str | Path | None = None, save_stats: str | Path | None = None,
        overwrite: bool = False, feature_fn=None, on_progress: Progress = None):
    """FID (and KID when features are at hand) between two folders or .npz statistics."""
    from maskgit_cli import fid as fid_mod

    check_batch_size(batch_size)
    if save_stats:
        if Path(a).suffix == ".npz":
            raise ConfigError("--save-stats saves the statistics of A; A is already a .npz")
        data.check_output(Path(save_stats), overwrite)
    if dims not in fid_mod.DIMS:
        raise ConfigError(f"--dims must be one of {', '.join(map(str, fid_mod.DIMS))}, got {dims}")
    dev = runtime.resolve_device(device)
    cache: dict[str, Any] = {}

    def extractor():
        if "m" not in cache:
            cache["m"] = feature_fn or feature_extractor(dims, inception_weights, dev)
        return cache["m"]

    t0 = time.time()
    sa = statistics(a, extractor, batch_size, dev, on_progress)
    sb = statistics(b, extractor, batch_size, dev, on_progress)
    if len(sa.mu) != dims or len(sb.mu) != dims:
        raise DataError(f"statistics have {len(sa.mu)} and {len(sb.mu)} dims but --dims is {dims}")
    if save_stats:
        sa.save(Path(save_stats))
    return fid_mod.compare(sa, sb, dims, time.time() - t0)


# ---------------------------------------------------------------------- compare-schedules


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    ranked_by: str
    fid_skipped: bool
    count: int
    out: str
    files: dict[str, str]
    seconds: float
    warnings: list[str]


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and x == x]
    if not v:
        return None, None
    t = torch.tensor(v, dtype=torch.float64)
    return t.mean().item(), (t.std(unbiased=False).item() if len(v) > 1 else 0.0)


REFERENCE_FILLS = ("harmonic", "oracle")  # the rows compare-schedules adds with --baselines


def compare_schedules(masked_dir: str | Path, masks_dir: str | Path, ground_truth: str | Path, out: str | Path, *,
                      model: str | Path | None = None, schedules_: list[str] | None = None, total_iter: int = 12,
                      sweet_spots: list[int] | None = None, seeds: list[int] | None = None,
                      reference_stats: str | Path | None = None, batch_size: int = 32,
                      inception_weights: str | Path | None = None, require_fid: bool = False, dims: int = 2048,
                      baselines: bool = True, device: str = "auto", overwrite: bool = False, base_settings=None,
                      feature_fn=None, on_cell: Callable[[int, int, str], None] | None = None) -> CompareResult:
    """Inpaint under every (schedule, sweet spot, seed); tabulate FID / KID / masked PSNR / SSIM,
    with the harmonic and oracle fills as reference rows (`baselines`)."""
    import csv
    import dataclasses

    from maskgit_cli import fid as fid_mod
    from maskgit_cli import plots
    from maskgit_cli.errors import WeightsNotFound
    from maskgit_cli.inpaint import Inpainter, InpaintSettings

    names = schedules_ or ["cosine", "linear", "square"]
    spots = sweet_spots or [total_iter]
    seeds = seeds if seeds is not None else [0]
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    check_batch_size(batch_size)
    for n in names:  # the decode rules, under the flags' names, before any work
        InpaintSettings(schedule=n, total_iter=total_iter).check()
    if any(t < 1 or t > total_iter for t in spots):
        raise ConfigError(f"--sweet-spots must lie in 1..{total_iter} (--total-iter)")
    pairing, notes = inpainting_pairs(masked_dir, masks_dir)
    pairs = pairing.pairs
    gt_paths = _ground_truth_paths(ground_truth, [p for p, _ in pairs])
    dev = runtime.resolve_device(device)
    tokenizer, transformer, cfg = load_model(model, dev)
    size = cfg.data.image_size
    t_start = time.time()

    extractor = feature_fn
    if extractor is None:
        try:
            extractor = feature_extractor(dims, inception_weights, dev)
        except WeightsNotFound as err:
            if require_fid:
                raise
            notes.append(f"FID skipped: {err}")
    ref = None
    if extractor is not None:
        if reference_stats:
            ref = fid_mod.Stats.load(reference_stats)
        else:
            gt_images = [img.float() / 255 for img in data.load_images(gt_paths, size, hint=_size_hint(size))]
            ref = fid_mod.Stats.of(fid_mod.features(gt_images, extractor, 50, dev))
        if 0 < len(pairs) < (len(ref.mu)):
            notes.append(f"{len(pairs)} images < {len(ref.mu)} feature dims: FID is biased upward; compare only at equal N")

    base = InpaintSettings.resolve(cfg.decode, base_settings)
    cells = [(s, t) for s in names for t in spots]
    jobs = [(dataclasses.replace(base, schedule=s, total_iter=total_iter, sweet_spot=t), seeds) for s, t in cells]
    if baselines:  # deterministic: one seed each
        jobs += [(dataclasses.replace(base, fill=f), seeds[:1]) for f in REFERENCE_FILLS]
    total_runs = sum(len(js) for _, js in jobs)
    rows, examples = [], {}
    with OutputDir(Path(out), overwrite) as tmp:
        run_i = 0
        for settings, job_seeds in jobs:
            inpainter = Inpainter(tokenizer, transformer, cfg, settings, dev)
            label = settings.fill if settings.fill != "maskgit" else f"{settings.schedule}_T{total_iter}_t{settings.sweet_spot}"
            per_seed = []
            for seed in job_seeds:
                cell_dir = tmp / "cells" / f"{label}_seed{seed}"
                t0 = time.time()
                summary, _ = inpaint_folder(inpainter, pairs, cell_dir, size=size, seed=seed,
                                            batch_size=batch_size, ground_truth=ground_truth)
                secs = time.time() - t0
                f = k = None
                if extractor is not None:
                    imgs = [img.float() / 255 for img in data.load_images(sorted(cell_dir.glob("*.png")), size)]
                    st = fid_mod.Stats.of(fid_mod.features(imgs, extractor, 50, dev))
                    f = fid_mod.frechet_distance(st.mu, st.sigma, ref.mu, ref.sigma)
                    if ref.features is not None:
                        k = fid_mod.kid(st.features, ref.features)[0]
                per_seed.append({"fid": f, "kid": k, "psnr": summary["psnr_masked"], "ssim": summary["ssim_masked"],
                                 "seconds_per_image": secs / len(pairs)})
                if seed == job_seeds[0]:
                    examples[label] = data.load_images([cell_dir / f"{pairs[0][0].stem}.png"], size)[0]
                run_i += 1
                if on_cell:
                    on_cell(run_i, total_runs, label.replace("_", " ") + f" seed={seed}")
            fm, fs = _mean_std([r["fid"] for r in per_seed])
            km, _ = _mean_std([r["kid"] for r in per_seed])
            pm, ps = _mean_std([r["psnr"] for r in per_seed])
            sm, _ = _mean_std([r["ssim"] for r in per_seed])
            spi, _ = _mean_std([r["seconds_per_image"] for r in per_seed])
            maskgit = settings.fill == "maskgit"
            rows.append({"fill": settings.fill, "schedule": settings.schedule if maskgit else settings.fill,
                         "total_iter": total_iter if maskgit else None,
                         "sweet_spot": settings.sweet_spot if maskgit else None, "fid_mean": fm, "fid_std": fs,
                         "kid_mean": km, "psnr_mean": pm, "psnr_std": ps, "ssim_mean": sm,
                         "seconds_per_image": spi, "seeds": len(job_seeds)})
        ranked_by = "fid" if extractor is not None else "psnr"
        metric = f"{ranked_by}_mean"
        sign = 1 if ranked_by == "fid" else -1  # lower FID, higher PSNR is better
        ranked = sorted((r for r in rows if r["fill"] == "maskgit"),
                        key=lambda r: (r[metric] is None, sign * (r[metric] or 0)))
        rows = ranked + [r for r in rows if r["fill"] != "maskgit"]  # references last, in their own order
        best = ranked[0] if ranked else None
        files = {"json": "results.json", "csv": "results.csv", "plot": "plot.png", "grid": "examples.png"}
        (tmp / files["json"]).write_text(json.dumps({"rows": rows, "best": best, "ranked_by": ranked_by,
                                                     "warnings": notes}, indent=2))
        with open(tmp / files["csv"], "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        nan = float("nan")
        series = {s: [(r["sweet_spot"], r[metric] if r[metric] is not None else nan) for r in ranked
                      if r["schedule"] == s] for s in names}
        for r in rows[len(ranked):]:  # a reference is one value: a flat line across the sweet spots
            series[f"{r['fill']} (ref.)"] = [(t, r[metric] if r[metric] is not None else nan) for t in spots]
        plots.line_chart(series, tmp / files["plot"], f"{metric} vs sweet spot (T={total_iter})", "sweet spot t",
                         metric)
        first_masked = data.load_images([pairs[0][0]], size)[0]
        first_gt = data.load_images([gt_paths[0]], size)[0]
        grid_rows = [[first_masked, *[examples[f"{s}_T{total_iter}_t{t}"] for t in spots], first_gt] for s in names]
        plots.image_grid(grid_rows, tmp / files["grid"], row_labels=names,
                         col_labels=["input", *[f"t={t}" for t in spots], "truth"])
    return CompareResult(rows=rows, best=best, ranked_by=ranked_by, fid_skipped=extractor is None,
                         count=len(pairs), out=str(out), files={k: str(Path(out) / v) for k, v in files.items()},
                         seconds=time.time() - t_start, warnings=notes)


# --------------------------------------------------------------------------- export / demo


@dataclass
class ExportResult:
    out: str
    tokenizer_id: str
    bytes: int
    dtype: str


def export(run_dir: str | Path, out: str | Path, *, half: bool = True, overrides: list[str] | None = None,
           overwrite: bool = False) -> ExportResult:
    """A run directory -> a small inference-only one: weights (EMA when kept) in fp16, no optimizer
    state, the configs and metrics kept, the transformer re-pointed at the exported tokenizer.
    `overrides` (key=value) change the transformer's saved config, e.g. its decode defaults."""
    run_dir, out = Path(run_dir), Path(out)
    tok = checkpoint.load(run_dir / checkpoint.TOKENIZER, "tokenizer")
    tr = checkpoint.load(run_dir / checkpoint.TRANSFORMER, "transformer")
    if overrides:
        tr["config"] = config.apply_overrides(checkpoint.config_of(tr), overrides).to_dict()
    dtype = torch.float16 if half else torch.float32

    def cast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}

    tok_sd = cast(tok["model"])
    tok_id = checkpoint.model_id(tok_sd)
    with OutputDir(out, overwrite) as tmp:
        checkpoint.save(tmp / checkpoint.TOKENIZER, {"kind": "tokenizer", "config": tok["config"], "model": tok_sd,
                                                     "model_id": tok_id, "step": tok.get("step"),
                                                     "metrics": tok.get("metrics", {}), "source": tok.get("model_id")})
        checkpoint.save(tmp / checkpoint.TRANSFORMER, {"kind": "transformer", "config": tr["config"],
                                                       "model": cast(tr.get("ema") or tr["model"]), "ema": None,
                                                       "tokenizer_id": tok_id, "step": tr.get("step"),
                                                       "metrics": tr.get("metrics", {})})
    size = sum(p.stat().st_size for p in out.iterdir())
    return ExportResult(out=str(out), tokenizer_id=tok_id, bytes=size, dtype=str(dtype).replace("torch.", ""))


SAMPLES = Path(__file__).parent / "assets" / "samples"


@dataclass
class DemoResult:
    count: int
    seconds: float
    out: str
    grid: str
    model: str
    settings: dict[str, Any]
    metrics: dict[str, float] | None
    per_image: list[dict[str, Any]]


def demo(out: str | Path, *, model: str | Path | None = None, samples: str | Path | None = None, settings=None,
         seed: int = 0, device: str = "auto", overwrite: bool = False, on_progress: Progress = None) -> DemoResult:
    """Inpaint the bundled sample cats (SAMPLES/{masked,masks,images}) and draw
    masked input | result | ground truth, one row per sample."""
    from maskgit_cli import plots
    from maskgit_cli.inpaint import Inpainter, InpaintSettings

    samples = Path(samples) if samples else SAMPLES
    if not (samples / "masked").is_dir():
        raise DataError(f"no demo samples in {samples} (expected masked/, masks/ and images/ folders)")
    dev = runtime.resolve_device(device)
    tokenizer, transformer, cfg = load_model(model, dev)
    settings = InpaintSettings.resolve(cfg.decode, settings)
    inpainter = Inpainter(tokenizer, transformer, cfg, settings, dev)
    pairs = data.pair_masks(samples / "masked", samples / "masks").pairs
    t0 = time.time()
    with OutputDir(Path(out), overwrite) as tmp:
        summary, per_image = inpaint_folder(inpainter, pairs, tmp / "results", size=cfg.data.image_size, seed=seed,
                                            batch_size=len(pairs), ground_truth=samples / "images",
                                            on_progress=on_progress)
        size = cfg.data.image_size
        masked = data.load_images([p for p, _ in pairs], size)
        results = data.load_images([tmp / "results" / f"{p.stem}.png" for p, _ in pairs], size)
        truth = data.load_images(_ground_truth_paths(samples / "images", [p for p, _ in pairs]), size)
        plots.image_grid([[masked[i], results[i], truth[i]] for i in range(len(pairs))], tmp / "grid.png",
                         col_labels=["masked", "inpainted", "truth"], scale=3)
    return DemoResult(count=len(pairs), seconds=time.time() - t0, out=str(out), grid=str(Path(out) / "grid.png"),
                      model=str(model or BUNDLED), settings=settings.to_dict(), metrics=summary, per_image=per_image)


# ----------------------------------------------------------------------------------- mask


@dataclass
class MaskResult:
    count: int
    out: str
    mean_missing_fraction: float


def make_masks(images_dir: str | Path, out: str | Path, *, seed: int = 0, size: int | None = None,
               limit: int | None = None, overwrite: bool = False) -> MaskResult:
    """An inpainting set in the lab's conventions from any image folder: OUT/masks (0 = missing),
    OUT/masked (missing pixels gray 128), OUT/images (the originals), random blobs and boxes."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    paths = data.list_images(images_dir)[:limit]
    first = data._open(paths[0])
    size = size or first.size[0]
    g = torch.Generator().manual_seed(seed)
    fractions = []
    with OutputDir(Path(out), overwrite) as tmp:
        for p in paths:
            img = data.load_images([p], size)[0]
            missing = data.random_region_masks(1, size, g)[0]
            fractions.append(missing.float().mean().item())
            name = f"{p.stem}.png"
            data.save_png(torch.where(missing, torch.zeros((), dtype=torch.uint8), torch.full((), 255, dtype=torch.uint8)),
                          tmp / "masks" / name)
            data.save_png(data.mask_out(img, missing), tmp / "masked" / name)
            data.save_png(img, tmp / "images" / name)
    return MaskResult(count=len(paths), out=str(out), mean_missing_fraction=sum(fractions) / len(fractions))
