"""The one training loop every stage runs in.

A stage (tokenizer.py, decoder.py, transformer.py) brings what is its own: models, batches, the
loss of one optimizer step, its validation figures and its checkpoint. The loop owns the rest:
the learning-rate schedule, logging to RUN/metrics_<stage>.jsonl, periodic checkpoints, epoch
rows, Ctrl-C (a checkpoint, then `--resume`), and the result.

Exact resume on the CPU: the learning rate is a function of the step, the data order a function
of (seed, epoch), every random draw inside a step comes from a generator seeded by (seed, step),
and the model, optimizer, scaler and global RNG (dropout) are in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskgit_cli import checkpoint, precision, runtime
from maskgit_cli.config import Config, dump, from_dict
from maskgit_cli.errors import CheckpointError, TrainingDiverged
from maskgit_cli.outputs import atomic_write

Callback = Callable[[dict[str, Any]], None] | None

# What acts only when a run starts (the weights it starts from, the layers it adds): a resume
# may leave it out
STARTING = ("init", "add_res_blocks", "add_context", "add_layers")
# What a resumed run may change: how long it trains, how often it logs and saves, and STARTING.
RESUMABLE = ("epochs", "max_steps", "log_every", "checkpoint_every", *STARTING)


def lr_at(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to base * min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, the same on every rank and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_777 + epoch))


def batch_indices(
    n: int, batch: int, seed: int, step: int, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """Indices of the global batch `step` (the last batch of an epoch may be short), this rank's
    share of it."""
    per_epoch = math.ceil(n / batch)
    epoch, i = divmod(step, per_epoch)
    idx = epoch_order(n, seed, epoch)[i * batch : (i + 1) * batch]
    return idx[rank::world]


class MetricsLog:
    """RUN_DIR/metrics_<stage>.jsonl, one JSON line per logged step or epoch; truncated on resume
    to the checkpoint's step so the file matches the run."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        lines = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        lines.append(line)
                except json.JSONDecodeError:
                    continue
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines)))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def adamw(params, **kw) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): one pass over all parameters per step instead of
    a loop of small ops per tensor (tokenizer step ~15 % faster on the CPU)."""
    return torch.optim.AdamW(params, fused=True, **kw)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(opt: torch.optim.Optimizer, scaler, params, clip: float) -> None:
    """Unscale (fp16 AMP), clip the global gradient norm, step, update the scaler."""
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(opt)
    scaler.update()


def check_finite(loss: torch.Tensor, step: int, ckpt_path: Path, hint: str) -> None:
    if not torch.isfinite(loss):
        kept = (
            f"the last good checkpoint is {ckpt_path}"
            if ckpt_path.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(f"loss became {loss.item()} at step {step}; {kept}; {hint}")


def resume_changes(saved: dict[str, Any], cfg: Config, stage: Stage, path: Path) -> list[str]:
    """Compare a checkpoint's config with the one a resume asks for. Training longer (epochs,
    max_steps) or logging differently is allowed and described; any other change to what the
    stage depends on is a CheckpointError naming the keys."""
    saved = from_dict(saved, f"{path} (saved config)").to_dict()  # keys added since: their defaults
    now = cfg.to_dict()
    changed, notes = [], []
    for section in stage.depends_on:
        for key, new in now[section].items():
            old = saved[section][key]
            if old == new:
                continue
            name = f"{section}.{key}"
            if key == "precision":  # compared resolved (precision.check_resume): auto may be fp32
                continue
            if section == stage.section and key in RESUMABLE:
                notes.append(
                    f"{name} {old} -> {new}"
                    + (
                        ": the learning-rate schedule follows the new total "
                        "(its cosine continues from the current step)"
                        if key in ("epochs", "max_steps")
                        else ": it acts only when a run starts"
                        if key in STARTING
                        else ""
                    )
                )
            else:
                changed.append(f"{name} ({old} -> {new})")
    if changed:
        raise CheckpointError(
            f"{path}: cannot resume with {', '.join(changed[:3])}"
            f"{f' and {len(changed) - 3} more' if len(changed) > 3 else ''}: only "
            f"{', '.join(RESUMABLE)} may change; resume with the run's own config "
            f"({path.parent / 'config.yaml'}) or start a new --out"
        )
    return notes


def past_total(step: int, total: int, path: Path) -> None:
    if step > total:
        raise CheckpointError(
            f"{path}: the run is already at step {step}, past the new total of {total} steps; "
            "raise --max-steps / --epochs to train further"
        )


def write_config(run_dir: Path, cfg: Config) -> None:
    """RUN/config.yaml: the resolved config of the run."""
    atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(dump(cfg)))


@dataclass
class StepOut:
    loss: float
    count: int  # what throughput counts (images or tokens), over all ranks
    fields: Callable[[], dict[str, Any]]  # the logged figures; only called on logged steps


class Stage(ABC):
    """What a stage plugs into the loop. A subclass sets the class attributes and implements
    setup / step / evaluate / save / result; `registry.STAGES` lists the subclasses."""

    name = ""
    section = ""  # its settings: cfg.<section>
    checkpoint_file = ""
    metrics_file = ""
    files: tuple[
        str, ...
    ] = ()  # every name it writes in the run directory (claimed before it starts)
    depends_on: tuple[
        str, ...
    ] = ()  # config sections its weights depend on: a resume refuses changes
    unit = "images"  # what throughput counts
    summary = ""  # one line for --help

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        device: torch.device,
        seed: int = 0,
        overwrite: bool = False,
    ):
        self.cfg, self.run_dir, self.device, self.seed = cfg, Path(run_dir), device, seed
        self.overwrite = overwrite  # a fresh start replaces the stage's checkpoint
        self.rank, self.world = runtime.dist_info()
        self.precision = precision.resolve(self.settings.precision, device)
        self.opt: torch.optim.Optimizer | None = (
            None  # the optimizer the learning-rate schedule drives
        )
        self.per_epoch = 1
        self.total = 0

    @property
    def settings(self):
        return getattr(self.cfg, self.section)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / self.checkpoint_file

    def steps(self, n: int, per_step: int) -> None:
        """Steps per epoch over n samples at per_step samples a step, and the run's total."""
        tc = self.settings
        self.per_epoch = math.ceil(n / per_step)
        self.total = tc.max_steps if tc.max_steps > 0 else tc.epochs * self.per_epoch

    # --- what a stage implements
    @classmethod
    def check_start(cls, run_dir: Path, resume: bool, overwrite: bool) -> None:
        """Before any data is read: --resume needs the checkpoint, a fresh start must not replace
        one without --overwrite."""
        from maskgit_cli.errors import DataError

        path = run_dir / cls.checkpoint_file
        if resume and not path.exists():
            raise DataError(f"--resume: no {cls.checkpoint_file} in {run_dir} to resume from")
        if not resume and path.exists() and not overwrite:
            raise DataError(
                f"{path} already exists; pass --resume to continue it or --overwrite to restart"
            )

    @classmethod
    def saved_state(cls, ck: dict[str, Any]) -> dict[str, Any]:
        """Where in its checkpoint the stage keeps its training state (step, precision, ...)."""
        return ck

    @classmethod
    def resume_precision(cls, cfg: Config, run_dir: Path, device: torch.device) -> Config:
        """The config a resume trains with: `auto` becomes the run's own precision where this
        hardware has it (precision.for_resume), so a run moved between machines continues as it
        began without a flag."""
        tc = getattr(cfg, cls.section)
        if tc.precision != "auto":
            return cfg
        saved = cls.saved_state(checkpoint.load(run_dir / cls.checkpoint_file))
        name = precision.for_resume("auto", saved.get("precision"), device)
        return dataclasses.replace(cfg, **{cls.section: dataclasses.replace(tc, precision=name)})

    @classmethod
    @abstractmethod
    def open(
        cls,
        cfg: Config,
        run_dir: Path,
        *,
        data: Path,
        val: Path | None,
        tokenizer: Path | None,
        resize: bool,
        device: torch.device,
        seed: int,
        compile: bool,
        overwrite: bool,
        status: Callable[..., None],
    ) -> Stage:
        """The stage with its data loaded from the command's paths; status(phase, done, total)
        tells what is loading."""

    @abstractmethod
    def setup(self, resume: bool) -> tuple[int, list[str]]:
        """Build models and optimizers, restore a checkpoint on resume -> (start step, notes)."""

    def first_rows(self, resume: bool) -> list[dict[str, Any]]:
        """Epoch rows logged before the first step (stage 1b: the PSNR before fine-tuning)."""
        return []

    @abstractmethod
    def step(self, step: int, lr: float) -> StepOut:
        """One optimizer step (the learning rate is already set on `opt`)."""

    def epoch_fields(self, lr: float, rate: float) -> dict[str, Any]:
        """Extra columns of every epoch row (before validation)."""
        return {}

    def evaluate(self, step: int) -> dict[str, Any]:
        """Validation figures at the end of an epoch (rank 0 only), added to its row."""
        return {}

    @abstractmethod
    def save(self, step: int, final: bool = False) -> None:
        """Write the stage's checkpoint (rank 0); `final`: the run's last one."""

    @abstractmethod
    def result(self, run: Run):
        """The command's result dataclass from what the loop measured."""


@dataclass
class Run:
    """What the loop measured, handed to Stage.result."""

    steps: int
    final_loss: float | None
    seconds: float
    rate: float  # images or tokens per second
    interrupted: bool
    epochs: list[dict[str, Any]]
    warnings: list[str]


def run(
    stage: Stage,
    *,
    resume: bool = False,
    on_step: Callback = None,
    on_epoch: Callback = None,
    on_tick: Callable[[int, int], None] | None = None,
):
    """Train `stage` from its start (or its checkpoint, with `resume`) to its total step.
    on_step(record) on logged steps, on_epoch(row) at epoch ends, on_tick(step, total) at every
    step (rank 0)."""
    step, notes = stage.setup(resume)
    tc, total, rank = stage.settings, stage.total, stage.rank
    log = (
        MetricsLog(stage.run_dir / stage.metrics_file, step if resume else None)
        if rank == 0
        else None
    )
    epochs: list[dict[str, Any]] = []
    for row in stage.first_rows(resume):
        epochs.append(row)
        log.write(row)
    t0, seen, rate, last, losses, interrupted = time.time(), 0, 0.0, None, [], False
    if rank == 0 and on_tick:
        on_tick(step, total)  # where this run starts (a resume: its checkpoint's step)
    try:
        while step < total:
            lr = lr_at(step, total, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
            set_lr(stage.opt, lr)
            out = stage.step(step, lr)
            step += 1
            seen += out.count
            last = out.loss
            losses.append(out.loss)
            rate = seen / max(1e-9, time.time() - t0)
            if rank == 0 and on_tick:
                on_tick(step, total)
            if rank == 0 and (step % tc.log_every == 0 or step == total):
                record = {
                    "step": step,
                    "loss": out.loss,
                    **out.fields(),
                    f"{stage.unit}_per_second": rate,
                }
                log.write(record)
                if on_step:
                    on_step({**record, "total": total})
            if step % tc.checkpoint_every == 0:
                stage.save(step)
            if step % stage.per_epoch == 0 or step == total:
                row = {
                    "epoch": math.ceil(step / stage.per_epoch),
                    "step": step,
                    "train_loss": sum(losses) / len(losses),
                    **stage.epoch_fields(lr, rate),
                }
                losses = []
                if rank == 0:
                    row.update(stage.evaluate(step))
                    epochs.append(row)
                    log.write(row)
                    if on_epoch:
                        on_epoch(row)
    except KeyboardInterrupt:
        interrupted = True
    stage.save(step, final=True)
    seconds = time.time() - t0
    result = stage.result(
        Run(
            steps=step,
            final_loss=last,
            seconds=seconds,
            rate=seen / max(seconds, 1e-9),
            interrupted=interrupted,
            epochs=epochs,
            warnings=notes,
        )
    )
    if not interrupted:
        runtime.leave_distributed()
    return result
