"""The commands as plain functions over paths, returning result dataclasses. No printing:
progress goes out through callbacks, errors as MaskgitError.

Every command that writes goes through `outputs`: its output never touches what it reads, is
written whole, replaces only maskgit's own earlier output (with --overwrite) and is locked while
it is written.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskgit_cli import checkpoint, config, data, outputs, runtime
from maskgit_cli import precision as precision_mod
from maskgit_cli.config import Config
from maskgit_cli.errors import CheckpointError, ConfigError, DataError
from maskgit_cli.pairing import ground_truth_paths, pair_inputs, pair_masks

Progress = Callable[[int, int], None] | None

BUNDLED = Path(__file__).parent / "assets" / "cats64"
SAMPLES = Path(__file__).parent / "assets" / "samples"


def as_dict(result: Any) -> dict[str, Any]:
    return dataclasses.asdict(result)


def check_batch_size(n: int) -> int:
    if n < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {n}")
    return n


def resolve_config(
    config_path: str | Path | None,
    overrides: list[str] | None,
    stage: str | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
) -> Config:
    """Defaults <- CONFIG <- --set <- the dedicated flags (--epochs, --max-steps, --batch-size,
    --precision), each flag checked by its config field's rule under its own name."""
    extra = list(overrides or [])
    if stage is not None:
        section = f"{stage}_train"
        cls = type(getattr(Config(), section))
        for key, value in (
            ("epochs", epochs),
            ("max_steps", max_steps),
            ("batch_size", batch_size),
            ("precision", precision),
        ):
            if value is not None:
                config.check_value(cls, key, value, "--" + key.replace("_", "-"))
                extra.append(f"{section}.{key}={value}")
    return config.load(config_path, extra)


def _model_reads(model: str | Path | None, flag: str = "--model") -> list[tuple[Path, str]]:
    """The files a --model run directory is read from (the bundled model: none): an output may sit
    inside the run's folder, never over its checkpoints."""
    if model is None:
        return []
    p = Path(model)
    folder = p if p.is_dir() else p.parent
    return [(folder / name, flag) for name in (checkpoint.TOKENIZER, checkpoint.TRANSFORMER)]


# ---------------------------------------------------------------------------------- train


def train(
    config_path: str | Path,
    stage: str,
    data_path: str | Path,
    out: str | Path,
    *,
    val: str | Path | None = None,
    overrides: list[str] | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str = "auto",
    resize: bool = False,
    tokenizer: str | Path | None = None,
    compile: bool = False,
    overwrite: bool = False,
    precision: str | None = None,
    on_step=None,
    on_epoch=None,
    on_tick=None,
    on_status: Callable[..., None] | None = None,
):
    """Train one stage (train.STAGES) into the run directory `out`. `precision` (None: the
    config's, `<stage>_train.precision`) is what the run trains in (precision.py)."""
    from maskgit_cli import train as training
    from maskgit_cli.train import loop

    if stage not in training.STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(training.STAGES)}, got '{stage}'")
    runtime.check_seed(seed)
    cfg = resolve_config(config_path, overrides, stage, epochs, max_steps, batch_size, precision)
    stage_cls = training.stage_class(stage)
    out_path = outputs.resolve(out)
    reads = [(data_path, "--data"), (val, "--val")]
    if tokenizer is not None and out_path not in Path(os.path.realpath(tokenizer)).parents:
        reads.append((tokenizer, "--tokenizer"))
    primary = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run directory
    with outputs.RunDir(out, stage_cls.files, reads=reads, primary=primary) as run_dir:
        stage_cls.check_start(run_dir, resume, overwrite)
        dev = runtime.resolve_device(device)
        if resume:
            cfg = stage_cls.resume_precision(cfg, run_dir, dev)
        st = stage_cls.open(
            cfg,
            run_dir,
            data=Path(data_path),
            val=Path(val) if val else None,
            tokenizer=Path(tokenizer) if tokenizer else None,
            resize=resize,
            device=dev,
            seed=seed,
            compile=compile,
            overwrite=overwrite,
            status=on_status or (lambda *_a: None),
        )
        primary = st.rank == 0
        return loop.run(
            st,
            resume=resume,
            on_step=on_step if primary else None,
            on_epoch=on_epoch if primary else None,
            on_tick=on_tick if primary else None,
        )


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
    precision: str


def encode(
    images_dir: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    config_path: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    resize: bool = False,
    overwrite: bool = False,
    precision: str = "auto",
    on_progress: Progress = None,
) -> EncodeResult:
    from maskgit_cli import tokens

    check_batch_size(batch_size)
    target = outputs.OutputFile(
        out,
        overwrite,
        signature=tokens.is_token_file,
        what="token file",
        reads=[(images_dir, "images"), (tokenizer, "--tokenizer"), (config_path, "--config")],
        example="tokens.npz",
    )
    target.check_existing()  # before the work, not after it
    dev = runtime.resolve_device(device)
    prec = precision_mod.resolve(precision, dev)
    fallback = config.load(config_path) if config_path else None
    from maskgit_cli import api

    model, cfg, mid = checkpoint.load_tokenizer(api.model_path(tokenizer), fallback, dev)
    model = prec.for_inference(model)
    paths = data.list_images(images_dir)
    t0 = time.time()
    images = data.load_images(paths, cfg.data.image_size, resize)
    ids, colors = tokens.encode_images(model, images, cfg, dev, batch_size, on_progress, prec)
    K = model.codebook_size
    with target as tmp:
        tokens.write_tokens(
            tmp,
            tokens.TokenFile(
                ids=ids,
                files=[p.name for p in paths],
                tokenizer_id=mid,
                codebook_size=K,
                colors=colors,
                precision=prec.name,
            ),
        )
    seconds = time.time() - t0
    usage = torch.unique(ids).numel() / K
    return EncodeResult(
        count=len(paths),
        grid=int(ids.shape[-1]),
        codebook_size=K,
        codebook_usage=usage,
        tokenizer_id=mid,
        out=str(out),
        seconds=seconds,
        images_per_second=len(paths) / max(seconds, 1e-9),
        precision=prec.name,
    )


# -------------------------------------------------------------------------------- inpaint


def load_model(model: str | Path | None, device: str = "auto", prec: str = "auto"):
    """A run folder, an exported model or a bundled one by name (None = cats64) -> api.Model."""
    from maskgit_cli import api

    return api.load_model(model, device=device, precision=prec)


def _fill_of(settings) -> str:
    if isinstance(settings, dict):
        return settings.get("fill") or "maskgit"
    return settings.fill if settings is not None else "maskgit"


def make_inpainter(model: str | Path | None, settings, device: str = "auto", prec: str = "auto"):
    """(Inpainter, api.Model or None) for the settings. The harmonic fill needs no model (it
    works at every image's own size); the oracle fill needs only a tokenizer: a run folder
    without a transformer will do."""
    from maskgit_cli import api
    from maskgit_cli.inpaint import Inpainter, InpaintSettings

    fill = _fill_of(settings)
    if fill == "harmonic":
        dev = runtime.resolve_device(device)
        s = InpaintSettings.resolve(config.DecodeConfig(), settings)
        return Inpainter(None, None, None, s, dev, precision_mod.resolve(prec, dev)), None
    path = api.model_path(model)
    if (
        fill == "oracle"
        and not (path if path.is_dir() else path.parent).joinpath(checkpoint.TRANSFORMER).is_file()
    ):
        m = api.load_tokenizer_only(path, device=device, precision=prec)
    else:
        m = load_model(model, device, prec)
    return m.inpainter(settings), m


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
    precision: str = "fp32"
    unused_masks: int = 0
    model_ids: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


RECORD, PER_IMAGE = "inpaint.json", "per_image.csv"  # what made an output folder, image by image


def _record(folder: Path, result: InpaintResult, seed: int, inputs: dict[str, str | None]) -> None:
    """OUT/inpaint.json (command, version, model and its ids, settings, seed, precision, mean
    metrics) and OUT/per_image.csv: what made the images beside them."""
    import csv
    import json

    from maskgit_cli import __version__

    record = {
        "written_by": f"maskgit {__version__}",
        "command": "inpaint",
        "inputs": inputs,
        "model": result.model,
        "model_ids": result.model_ids,
        "seed": seed,
        "precision": result.precision,
        "settings": result.settings,
        "count": result.count,
        "metrics": result.metrics,
    }
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    keys = list(dict.fromkeys(k for row in result.per_image for k in row))
    with open(folder / PER_IMAGE, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result.per_image)


def inpaint(
    masked_dir: str | Path,
    masks_dir: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    settings=None,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    mask_missing: str = "black",
    save_steps: bool = False,
    ground_truth: str | Path | None = None,
    overwrite: bool = False,
    precision: str = "auto",
    fit: str = "pad",
    on_progress: Progress = None,
) -> InpaintResult:
    """Inpaint a folder of images (OUT/NAME.png, with OUT/inpaint.json and OUT/per_image.csv),
    or one image: MASKED a file, MASKS its mask file, OUT the image file to write."""
    from maskgit_cli import fit as fit_mod
    from maskgit_cli.photos import inpaint_pairs

    if mask_missing not in data.MISSING:
        raise ConfigError("--mask-missing must be 'black' (0 = missing, the lab's) or 'white'")
    if fit not in fit_mod.FITS:
        raise ConfigError(f"--fit must be one of {', '.join(fit_mod.FITS)}, got '{fit}'")
    check_batch_size(batch_size)
    runtime.check_seed(seed)
    single = Path(masked_dir).is_file()
    reads = [
        (masked_dir, "image" if single else "images"),
        (masks_dir, "--mask" if single else "--masks"),
        (ground_truth, "--ground-truth"),
        *_model_reads(model),
    ]
    if single:
        if not Path(masks_dir).is_file():
            raise DataError(
                f"{masked_dir} is one image, so --mask must be its mask file, not {masks_dir}"
            )
        target = outputs.OutputFile(
            out,
            overwrite,
            signature=data.is_maskgit_png,
            what="image",
            reads=reads,
            example="filled.png",
        )
        pairs, notes, unused = [(Path(masked_dir), Path(masks_dir))], [], 0
        truths = [Path(ground_truth)] if ground_truth else None
    else:
        target = outputs.OutputDir(out, overwrite, command="inpaint", reads=reads)
        pairing, notes = pair_inputs(masked_dir, masks_dir)
        pairs, unused = pairing.pairs, len(pairing.unused)
        truths = ground_truth_paths(ground_truth, [p for p, _ in pairs]) if ground_truth else None
        data.output_names(
            [p for p, _ in pairs]
        )  # two inputs on one output name: refused before any work
    target.check_existing()  # before the work, not after it
    if ground_truth is None and _fill_of(settings) == "oracle":
        raise ConfigError(
            "--fill oracle needs --ground-truth: it decodes the true images' own tokens"
        )
    inpainter, m = make_inpainter(model, settings, device, precision)
    t0 = time.time()
    with target as tmp:
        folder, names = (tmp.parent, [tmp.name]) if single else (tmp, None)
        summary, per_image = inpaint_pairs(
            inpainter,
            pairs,
            folder,
            seed=seed,
            batch_size=batch_size,
            mask_missing=mask_missing,
            save_steps=save_steps and not single,
            truths=truths,
            fit_mode=fit,
            names=names,
            on_progress=on_progress,
        )
        seconds = time.time() - t0
        result = InpaintResult(
            count=len(pairs),
            seconds=seconds,
            images_per_second=len(pairs) / max(seconds, 1e-9),
            out=str(out),
            settings=inpainter.s.to_dict(),
            model="none (harmonic fill)"
            if m is None
            else str(BUNDLED)
            if api_bundled(model)
            else str(model),
            transformer_passes=inpainter.transformer_passes,
            metrics=summary,
            per_image=per_image,
            precision=inpainter.precision.name,
            unused_masks=unused,
            model_ids={} if m is None else _ids(m),
            warnings=notes,
        )
        if not single:
            _record(
                tmp,
                result,
                seed,
                {
                    "images": str(masked_dir),
                    "masks": str(masks_dir),
                    "ground_truth": str(ground_truth) if ground_truth else None,
                },
            )
            result.files = {
                "record": str(Path(out) / RECORD),
                "per_image": str(Path(out) / PER_IMAGE),
            }
    return result


def api_bundled(model) -> bool:
    from maskgit_cli import api

    return api.bundled(model)


def _ids(m) -> dict[str, str]:
    ids = {"tokenizer": m.tokenizer_id}
    if m.transformer_id is not None:
        ids["transformer"] = m.transformer_id
    return ids


# ------------------------------------------------------------------------------------ fid


def feature_extractor(dims: int, weights: str | Path | None, device: torch.device):
    from maskgit_cli import fid_weights

    return fid_weights.load_inception(dims, weights, device)


def fid(
    a: str | Path,
    b: str | Path,
    *,
    dims: int = 2048,
    batch_size: int = 50,
    device: str = "auto",
    inception_weights: str | Path | None = None,
    save_stats: str | Path | None = None,
    overwrite: bool = False,
    feature_fn=None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    kid_seed: int = 0,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    versus: str | Path | None = None,
    on_progress: Progress = None,
):
    """FID (and KID when features are at hand) between two folders or .npz statistics; with
    `versus` (a second fill of A's images) also FID(versus, B) and the difference; with
    `bootstrap` resamples the images' standard error of the FID and of the difference. With
    `save_stats`, A's statistics are saved after the FID is computed; if saving fails, the error
    carries the FID."""
    from maskgit_cli import bootstrap as boot
    from maskgit_cli import fid as fid_mod
    from maskgit_cli.errors import MaskgitError

    check_batch_size(batch_size)
    if kid_subsets < 1 or kid_subset_size < 2:
        raise ConfigError("--kid-subsets must be at least 1 and --kid-subset-size at least 2")
    runtime.check_seed(kid_seed, "--kid-seed")
    boot.check_resamples(bootstrap)
    runtime.check_seed(bootstrap_seed, "--bootstrap-seed")
    from maskgit_cli.inception import DIMS

    if dims not in DIMS:
        raise ConfigError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
    target = None
    if save_stats:
        if Path(a).suffix == ".npz":
            raise ConfigError("--save-stats saves the statistics of A; A is already a .npz")
        target = outputs.OutputFile(
            save_stats,
            overwrite,
            signature=fid_mod.is_stats_file,
            what="statistics file",
            reads=[
                (a, "A"),
                (b, "B"),
                (versus, "--versus"),
                (inception_weights, "--inception-weights"),
            ],
            flag="--save-stats",
            example="stats.npz",
        )
        target.check_existing()
    dev = runtime.resolve_device(device)
    cache: dict[str, Any] = {}

    def extractor():
        if "m" not in cache:
            cache["m"] = feature_fn or feature_extractor(dims, inception_weights, dev)
        return cache["m"]

    t0 = time.time()
    sa = fid_mod.statistics(a, extractor, batch_size, dev, on_progress)
    sb = fid_mod.statistics(b, extractor, batch_size, dev, on_progress)
    sv = fid_mod.statistics(versus, extractor, batch_size, dev, on_progress) if versus else None
    sides = [(a, sa), (b, sb)] + ([(versus, sv)] if sv is not None else [])
    for side, st in sides:
        if len(st.mu) != dims:
            raise DataError(
                f"{side}: statistics of {len(st.mu)} dims but --dims is {dims}; compute every "
                "set at the same feature size"
            )
        if bootstrap and st.features is None:
            raise DataError(
                f"{side}: --bootstrap resamples images and these statistics keep no "
                "per-image features (pytorch-fid's mu / sigma); give the image folder, or "
                "statistics saved by `maskgit fid --save-stats`"
            )
    result = fid_mod.compare(sa, sb, dims, time.time() - t0, kid_subsets, kid_subset_size, kid_seed)
    if sv is not None:
        result.fid_versus = fid_mod.distance(sv, sb)
        result.fid_difference = result.fid - result.fid_versus
    if bootstrap:
        t1 = time.time()
        s = boot.fid_spread(
            sa.features,
            sb.features,
            bootstrap,
            bootstrap_seed,
            sa.names,
            sb.names,
            versus=sv.features if sv is not None else None,
            versus_names=sv.names if sv is not None else None,
            labels=(str(a), f"--versus {versus}"),
        )
        result.fid_se_images, result.bootstrap_resamples = s.se, s.resamples
        result.bootstrap_paired, result.fid_difference_se_images = s.paired, s.difference_se
        result.seconds += time.time() - t1
        if not s.paired:
            nameless = [str(side) for side, st in ((a, sa), (b, sb)) if not st.names]
            result.warnings.append(
                f"bootstrap unpaired: {nameless[0]} does not name its images (statistics saved "
                "by pytorch-fid or an older maskgit; save them again with --save-stats), so each "
                "set was resampled on its own"
                if nameless
                else "bootstrap unpaired: A and B hold different image names, so each set was "
                "resampled on its own (for a fill and its truths, keep the names alike)"
            )
    if target is not None:
        try:
            with target as tmp:
                sa.write(tmp)
        except MaskgitError as err:
            raise type(err)(
                f"{err} (the FID was computed: {result.fid:.4f})", details=as_dict(result)
            ) from None
    return result


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
    precision: str = "fp32"
    tied_with_best: list[str] = field(default_factory=list)  # within one standard error of the best
    work: dict[str, int] = field(default_factory=dict)
    bootstrap_resamples: int = 0  # the images resampled for fid_se_images (0: seeds only)


def _unique(values: list, flag: str) -> list:
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ConfigError(f"{flag} repeats {', '.join(map(str, repeated))}; give each value once")
    return values


def compare_schedules(
    masked_dir: str | Path,
    masks_dir: str | Path,
    ground_truth: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    schedules_: list[str] | None = None,
    total_iter: int = 12,
    sweet_spots: list[int] | None = None,
    seeds: list[int] | None = None,
    reference_stats: str | Path | None = None,
    batch_size: int = 32,
    inception_weights: str | Path | None = None,
    require_fid: bool = False,
    dims: int = 2048,
    baselines: bool = True,
    device: str = "auto",
    overwrite: bool = False,
    base_settings=None,
    mask_missing: str = "black",
    precision: str = "auto",
    feature_fn=None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    on_plan: Callable[[dict], None] | None = None,
    on_cell: Callable[[int, int, str], None] | None = None,
) -> CompareResult:
    """Inpaint under every (schedule, sweet spot, seed); tabulate FID / KID / masked PSNR / SSIM,
    with the harmonic and oracle fills as reference rows (`baselines`). With `bootstrap`
    resamples, each row's FID also gets the images' standard error (at its first seed), and its
    difference from the best row the same, which widens what counts as a tie."""
    from maskgit_cli import bootstrap as boot
    from maskgit_cli import fid as fid_mod
    from maskgit_cli import schedule_study
    from maskgit_cli.errors import WeightsNotFound
    from maskgit_cli.inpaint import InpaintSettings

    if mask_missing not in data.MISSING:
        raise ConfigError("--mask-missing must be 'black' (0 = missing, the lab's) or 'white'")
    names = _unique(schedules_ or ["cosine", "linear", "square"], "--schedules")
    spots = _unique(sweet_spots or [total_iter], "--sweet-spots")
    seeds = _unique(seeds if seeds is not None else [0], "--seeds")
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    for s in seeds:
        runtime.check_seed(s, "--seeds")
    boot.check_resamples(bootstrap)
    runtime.check_seed(bootstrap_seed, "--bootstrap-seed")
    check_batch_size(batch_size)
    for n in names:  # the decode rules, under the flags' names, before any work
        InpaintSettings(schedule=n, total_iter=total_iter).check()
    if any(t < 1 or t > total_iter for t in spots):
        raise ConfigError(f"--sweet-spots must lie in 1..{total_iter} (--total-iter)")
    target = outputs.OutputDir(
        out,
        overwrite,
        command="compare-schedules",
        reads=[
            (masked_dir, "images"),
            (masks_dir, "--masks"),
            (ground_truth, "--ground-truth"),
            *_model_reads(model),
            (reference_stats, "--reference-stats"),
            (inception_weights, "--inception-weights"),
        ],
    )
    target.check_existing()
    pairing, notes = pair_inputs(masked_dir, masks_dir)
    pairs = pairing.pairs
    truths = ground_truth_paths(ground_truth, [p for p, _ in pairs])
    data.output_names([p for p, _ in pairs])
    m = load_model(model, device, precision)
    dev, prec, cfg = m.device, m.precision, m.config
    t_start = time.time()

    extractor = feature_fn
    if extractor is None:
        try:
            extractor = feature_extractor(dims, inception_weights, dev)
        except WeightsNotFound as err:
            if require_fid:
                raise
            notes.append(f"FID skipped: {err}")
            if bootstrap:
                notes.append("--bootstrap skipped: it resamples FID, which needs the weights")
    fid_of = resample = None
    if extractor is not None:
        if len(pairs) < 2:
            raise DataError(
                f"{masked_dir}: FID needs at least 2 images per set and there is {len(pairs)}; add "
                "images"
            )
        if reference_stats:
            ref = fid_mod.Stats.load(reference_stats)
        else:
            ref = fid_mod.Stats.of(
                fid_mod.features(fid_mod.load_float_images(truths), extractor, 50, dev)
            )
        if feature_fn is None and len(ref.mu) != dims:
            raise DataError(
                f"--reference-stats {reference_stats} has {len(ref.mu)} dims but FID here uses "
                f"{dims}; "
                "save the reference statistics at the same feature size"
            )
        if 0 < len(pairs) < len(ref.mu):
            notes.append(
                f"{len(pairs)} images < {len(ref.mu)} feature dims: FID is biased upward; compare "
                "only at "
                "equal N"
            )

        out_names = data.output_names([p for p, _ in pairs])

        def fid_of(folder: Path) -> tuple[float, float | None, Any]:
            """FID and KID of a cell's fills, and their features in the order of `pairs`."""
            paths = [folder / n for n in out_names]
            st = fid_mod.Stats.of(
                fid_mod.features(fid_mod.load_float_images(paths), extractor, 50, dev)
            )
            k = fid_mod.kid(st.features, ref.features)[0] if ref.features is not None else None
            return fid_mod.distance(st, ref), k, st.features

        if bootstrap:
            if ref.features is None:
                raise DataError(
                    f"--reference-stats {reference_stats} keeps no per-image features "
                    "(pytorch-fid's mu / sigma), which --bootstrap resamples; save them with "
                    "`maskgit fid --save-stats` or leave out --reference-stats"
                )
            ref_feats, paired = ref.features, not reference_stats
            if reference_stats:  # its rows follow the pairs when its names say so
                matched = boot.in_order_of(ref.features, ref.names, [p.stem for p in truths])
                if matched is not None:
                    ref_feats, paired = matched, True
            if not paired:
                notes.append(
                    f"bootstrap unpaired: --reference-stats {reference_stats} does not name the "
                    "--ground-truth images, so it was resampled on its own"
                )

            def resample(sets: list) -> Any:
                return boot.resampled_fids(ref_feats, sets, bootstrap, bootstrap_seed, paired)

    base = InpaintSettings.resolve(cfg.decode, base_settings)
    jobs = schedule_study.cells(base, names, total_iter, spots, seeds, baselines)
    runs = sum(len(js) for _, js in jobs)
    work = {
        "cells": len(names) * len(spots),
        "seeds": len(seeds),
        "runs": runs,
        "images": len(pairs),
        "inpaintings": runs * len(pairs),
        "fids": runs if extractor is not None else 0,
    }
    with target as tmp:
        if on_plan:  # once the output is ours, before hours of work: say how much
            on_plan(work)
        rows, best, ranked_by, tied = schedule_study.run(
            m,
            pairs,
            truths,
            tmp,
            jobs=jobs,
            schedules=names,
            total_iter=total_iter,
            spots=spots,
            batch_size=batch_size,
            mask_missing=mask_missing,
            fid_of=fid_of,
            resample=resample,
            notes=notes,
            on_cell=on_cell,
        )
    return CompareResult(
        rows=rows,
        best=best,
        ranked_by=ranked_by,
        fid_skipped=extractor is None,
        count=len(pairs),
        out=str(out),
        files={k: str(Path(out) / v) for k, v in schedule_study.FILES.items()},
        seconds=time.time() - t_start,
        warnings=notes,
        precision=prec.name,
        tied_with_best=tied,
        work=work,
        bootstrap_resamples=bootstrap if resample is not None else 0,
    )


# --------------------------------------------------------------------------- export / demo


@dataclass
class ExportResult:
    out: str
    tokenizer_id: str
    bytes: int
    dtype: str


def _without_start(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """A saved config with what acted only when its run started (the weights it began from, the
    layers it added) back at the defaults: the config already records the grown architecture, and
    an inference copy should not carry a path of the machine that trained it."""
    from maskgit_cli.train.loop import STARTING

    if saved is None:
        return None
    fresh = Config().to_dict()
    return {
        name: {k: fresh[name][k] if k in STARTING else v for k, v in section.items()}
        if isinstance(section, dict) and name in fresh
        else section
        for name, section in saved.items()
    }


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    half: bool = True,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """A run directory -> a small inference-only one: weights (EMA when kept) in fp16, no optimizer
    state, the configs and metrics kept, the transformer re-pointed at the exported tokenizer.
    `overrides` (key=value) change the transformer's saved config, e.g. its decode defaults."""
    run_dir = Path(run_dir)
    target = outputs.OutputDir(
        out, overwrite, command="export", reads=_model_reads(run_dir, "RUN_DIR")
    )
    target.check_existing()
    tok = checkpoint.load(run_dir / checkpoint.TOKENIZER, "tokenizer")
    tr = checkpoint.load(run_dir / checkpoint.TRANSFORMER, "transformer")
    if overrides:
        tr["config"] = config.apply_overrides(checkpoint.config_of(tr), overrides).to_dict()
    tok_cfg, tr_cfg = (_without_start(ck["config"]) for ck in (tok, tr))
    dtype = torch.float16 if half else torch.float32

    def cast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}

    tok_sd = cast(checkpoint.weights(tok))
    tr_sd = cast(checkpoint.weights(tr))
    checkpoint.check_finite(tok_sd, run_dir / checkpoint.TOKENIZER)
    checkpoint.check_finite(tr_sd, run_dir / checkpoint.TRANSFORMER)
    tok_id = checkpoint.model_id(tok_sd)
    with target as tmp:
        checkpoint.save(
            tmp / checkpoint.TOKENIZER,
            {
                "kind": "tokenizer",
                "config": tok_cfg,
                "model": tok_sd,
                "model_id": tok_id,
                "step": tok.get("step"),
                "metrics": tok.get("metrics", {}),
                "source": tok.get("model_id"),
            },
        )
        checkpoint.save(
            tmp / checkpoint.TRANSFORMER,
            {
                "kind": "transformer",
                "config": tr_cfg,
                "model": tr_sd,
                "ema": None,
                "tokenizer_id": tok_id,
                "step": tr.get("step"),
                "metrics": tr.get("metrics", {}),
            },
        )
        if (run_dir / checkpoint.CRITIC).is_file():
            _export_critic(run_dir, tmp, cast, tok, tok_id, checkpoint.model_id(tr_sd))
    out = target.out
    size = sum(p.stat().st_size for p in out.iterdir())
    return ExportResult(
        out=str(out), tokenizer_id=tok_id, bytes=size, dtype=str(dtype).replace("torch.", "")
    )


def _export_critic(run_dir: Path, tmp: Path, cast, tok: dict, tok_id: str, tr_id: str) -> None:
    """RUN_DIR's Token-Critic beside the exported models, re-pointed at them (the cast changes
    their weight hashes, not what they compute), if it belongs to the run's own models. `tok`:
    the run's tokenizer checkpoint, already read by the export."""
    ck = checkpoint.load(run_dir / checkpoint.CRITIC, "critic")
    _tok, tr, _cfg = checkpoint.load_transformer(run_dir)
    if ck.get("tokenizer_id") != checkpoint.tokens_id(tok) or ck.get(
        "transformer_id"
    ) != checkpoint.model_id(tr.state_dict()):
        raise CheckpointError(
            f"{run_dir / checkpoint.CRITIC} was trained against other models than the run's; "
            "train it again (maskgit train --stage critic --overwrite) or remove it"
        )
    sd = cast(checkpoint.weights(ck))
    checkpoint.check_finite(sd, run_dir / checkpoint.CRITIC)
    checkpoint.save(
        tmp / checkpoint.CRITIC,
        {
            "kind": "critic",
            "config": _without_start(ck["config"]),
            "model": sd,
            "tokenizer_id": tok_id,
            "transformer_id": tr_id,
            "step": ck.get("step"),
            "metrics": ck.get("metrics", {}),
        },
    )


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
    precision: str = "fp32"


def demo(
    out: str | Path,
    *,
    model: str | Path | None = None,
    samples: str | Path | None = None,
    settings=None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    precision: str = "auto",
    on_progress: Progress = None,
) -> DemoResult:
    """Inpaint the bundled sample cats (SAMPLES/{masked,masks,images}) and draw
    masked input | result | ground truth, one row per sample."""
    from maskgit_cli import plots
    from maskgit_cli.photos import inpaint_pairs

    runtime.check_seed(seed)
    samples = Path(samples) if samples else SAMPLES
    target = outputs.OutputDir(
        out, overwrite, command="demo", reads=[(samples, "--samples"), *_model_reads(model)]
    )
    target.check_existing()
    if not (samples / "masked").is_dir():
        raise DataError(
            f"no demo samples in {samples} (expected masked/, masks/ and images/ folders)"
        )
    m = load_model(model, device, precision)
    cfg, prec = m.config, m.precision
    inpainter = m.inpainter(settings)
    settings = inpainter.s
    pairs = pair_masks(samples / "masked", samples / "masks").pairs
    truths = ground_truth_paths(samples / "images", [p for p, _ in pairs])
    t0 = time.time()
    with target as tmp:
        summary, per_image = inpaint_pairs(
            inpainter,
            pairs,
            tmp / "results",
            seed=seed,
            batch_size=len(pairs),
            truths=truths,
            on_progress=on_progress,
        )
        size = cfg.data.image_size
        masked = data.load_images([p for p, _ in pairs], size, resize=True)
        results = data.load_images(
            [tmp / "results" / r["output"] for r in per_image], size, resize=True
        )
        truth = data.load_images(truths, size, resize=True)
        per_row = 3 if len(pairs) > 4 else 1  # samples side by side: a grid, not one long column
        rows, captions = [], []
        for start in range(0, len(pairs), per_row):
            idx = range(start, min(start + per_row, len(pairs)))
            rows.append([t for i in idx for t in (masked[i], results[i], truth[i])])
            captions.append(
                [c for i in idx for c in (pairs[i][0].name, _psnr_caption(per_image[i]), "")]
            )
        plots.image_grid(
            rows,
            tmp / "grid.png",
            col_labels=["masked", "inpainted", "truth"] * per_row,
            captions=captions,
            scale=3,
        )
    return DemoResult(
        count=len(pairs),
        seconds=time.time() - t0,
        out=str(out),
        grid=str(Path(out) / "grid.png"),
        model=str(model or BUNDLED),
        settings=settings.to_dict(),
        metrics=summary,
        per_image=per_image,
        precision=prec.name,
    )


# ----------------------------------------------------------------------------------- mask


def _psnr_caption(row: dict[str, Any]) -> str:
    value = row.get("psnr_masked")
    return f"hole PSNR {value:.1f} dB" if value is not None and value == value else ""


@dataclass
class MaskResult:
    count: int
    out: str
    mean_missing_fraction: float


MIN_MASK_SIDE = 8  # a hole needs known pixels around it


def make_masks(
    images_dir: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    size: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
) -> MaskResult:
    """An inpainting set in the lab's conventions from any image folder, at each image's own size:
    OUT/masks (0 = missing), OUT/masked (missing pixels gray 128), OUT/images (the originals as
    PNG), random blobs and boxes."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    runtime.check_seed(seed)
    target = outputs.OutputDir(out, overwrite, command="mask", reads=[(images_dir, "images")])
    target.check_existing()
    paths = data.list_images(images_dir)[:limit]
    names = data.output_names(paths)
    for p in paths:
        w, h = data.image_size(p)
        if min(w, h) < MIN_MASK_SIDE:
            raise DataError(
                f"{p}: image is {w}x{h}; a hole needs known pixels around it, so masks are made "
                "for "
                f"images of at least {MIN_MASK_SIDE}x{MIN_MASK_SIDE}"
            )
    g = torch.Generator().manual_seed(seed)
    fractions = []
    with target as tmp:
        for p, name in zip(paths, names, strict=True):
            img = torch.from_numpy(data.read_rgb(p)).permute(2, 0, 1).contiguous()
            if size is not None and img.shape[1:] != (size, size):
                raise DataError(
                    f"{p}: image is {img.shape[2]}x{img.shape[1]}, expected {size}x{size}"
                )
            missing = data.random_region_masks(1, tuple(img.shape[1:]), g)[0]
            fractions.append(missing.float().mean().item())
            data.save_png(
                torch.where(
                    missing,
                    torch.zeros((), dtype=torch.uint8),
                    torch.full((), 255, dtype=torch.uint8),
                ),
                tmp / "masks" / name,
            )
            data.save_png(data.mask_out(img, missing), tmp / "masked" / name)
            data.save_png(img, tmp / "images" / name)
    return MaskResult(
        count=len(paths), out=str(out), mean_missing_fraction=sum(fractions) / len(fractions)
    )
