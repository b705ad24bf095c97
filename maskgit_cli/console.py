"""Everything people see: a lazy stderr Console, progress bars, tables, and emit_json() for
scripts (stdout carries exactly one JSON object). The only module that imports rich."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(stderr=True, highlight=False)
    return _console


# Messages are text, not markup: a "[x]" in a path or a list must print as written.


def info(message: str) -> None:
    if not quiet():
        console().print(escape(message), soft_wrap=True)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    console().print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_clean(payload)) + "\n")
    sys.stdout.flush()


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


_FIGURES = {  # how a logged figure reads in a progress line: (label, format)
    "loss": ("loss", "{:.4f}"),
    "psnr": ("psnr", "{:.2f} dB"),
    "usage": ("usage", "{:.0%}"),
    "gan_weight": ("gan weight", "{:.3f}"),
    "lr": ("lr", "{:.2e}"),
    "images_per_second": ("", "{:.1f} img/s"),
    "tokens_per_second": ("", "{:.0f} tok/s"),
}


def figures(record: dict[str, Any], keys: Iterable[str]) -> str:
    """'loss 0.1234 psnr 21.30 dB 12.5 img/s': the named figures of a logged record."""
    parts = []
    for k in keys:
        if record.get(k) is None:
            continue
        label, form = _FIGURES.get(k, (k.replace("_", " "), "{:.4g}"))
        parts.append(f"{label} {form.format(record[k])}".strip())
    return " ".join(parts)


def table(
    title: str, columns: list[str], rows: Iterable[Iterable[Any]], highlight: int | None = None
) -> None:
    if quiet():
        return
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(
            c,
            justify="left" if c in ("schedule", "key", "file") else "right",
            no_wrap=c == "schedule",
        )
    for i, row in enumerate(rows):
        t.add_row(*[fmt(v) for v in row], style="bold green" if i == highlight else None)
    console().print(t)


LABELS = {  # what a result's key means, with its unit and which way is better
    "fid": "FID (lower is better)",
    "kid": "KID (lower is better)",
    "psnr": "PSNR, dB (higher is better)",
    "psnr_masked": "masked PSNR, dB (higher is better)",
    "ssim": "SSIM (higher is better)",
    "ssim_masked": "masked SSIM (higher is better)",
    "l1": "L1 (lower is better)",
    "l1_masked": "masked L1 (lower is better)",
    "val_psnr": "val PSNR, dB (higher is better)",
    "val_loss": "val loss (lower is better)",
    "final_loss": "last step's loss",
    "codebook_usage": "codebook usage",
    "perplexity": "perplexity of the codes",
    "seconds": "seconds",
    "images_per_second": "images/s",
    "tokens_per_second": "tokens/s",
    "mean_missing_fraction": "mean missing fraction",
    "count_a": "images in A",
    "count_b": "images in B",
}


def kv_table(title: str, items: dict[str, Any]) -> None:
    table(title, ["key", "value"], [(LABELS.get(k, k), v) for k, v in items.items()])


def fmt_kid(value: float | None, std: float | None = None) -> str:
    """KID is an unbiased estimate: below zero it says no difference was measured, not a value."""
    if value is None:
        return "-"
    text = f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    return text + (" (below 0: no measurable difference)" if value < 0 else "")


def fid_table(result: dict[str, Any]) -> None:
    """FID and KID (± its std over subsets) as people read them."""
    items = {"fid": result["fid"]}
    if result.get("fid_se_images") is not None:
        how = "paired" if result["bootstrap_paired"] else "unpaired"
        items["FID's standard error over images"] = (
            f"{result['fid_se_images']:.3f} "
            f"(bootstrap, {result['bootstrap_resamples']} {how} resamples)"
        )
    if result.get("fid_versus") is not None:
        items["FID of --versus"] = result["fid_versus"]
        diff = f"{result['fid_difference']:+.3f}"
        if result.get("fid_difference_se_images") is not None:
            diff += f" (standard error over images {result['fid_difference_se_images']:.3f})"
        items["FID(A) - FID(--versus)"] = diff
    items["kid"] = fmt_kid(result["kid"], result["kid_std"])
    if result.get("kid_subset_size"):
        items["KID subsets"] = f"{result['kid_subsets']} of {result['kid_subset_size']} images"
    items |= {k: result[k] for k in ("count_a", "count_b", "dims", "seconds")}
    kv_table("FID (pytorch-fid convention)", items)


_QUIET = {"on": False}


def set_quiet(quiet: bool) -> None:
    """--quiet: no progress, tables or notes on stderr; warnings and errors still print."""
    _QUIET["on"] = quiet


def quiet() -> bool:
    return _QUIET["on"]


class _Bar:
    """What the core's callbacks drive: update(completed, total, status, description). The
    description names the phase ("loading images", "preparing tokens", "train tokenizer")."""

    def update(
        self,
        completed: int | None = None,
        total: int | None = None,
        status: str | None = None,
        description: str | None = None,
    ) -> None:
        """Nothing to show (--quiet)."""


class _RichBar(_Bar):
    """A live bar on a terminal."""

    def __init__(self, progress: Progress, task: int):
        self.progress, self.task = progress, task
        self.paced = False  # has a count set the starting point the eta is measured from?

    def update(self, completed=None, total=None, status=None, description=None) -> None:
        task = self.progress.tasks[self.task]
        new_phase = description is not None and description != task.description
        if new_phase or (completed is not None and (completed < task.completed or not self.paced)):
            # a new phase, the first count of one (a resumed run starts at its checkpoint's
            # step) or a second pass (fid's folder B): the clock and the eta start here, not at
            # the counts before
            self.progress.reset(
                self.task, completed=completed or 0, description=description if new_phase else None
            )
            self.paced = completed is not None
        kw: dict[str, Any] = {}
        for k, v in (("completed", completed), ("total", total), ("status", status)):
            if v is not None:
                kw[k] = v
        self.progress.update(self.task, **kw)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _LineBar(_Bar):
    """Progress for a log (stderr not a terminal: CI, `2> log`): a plain line every `every`
    seconds (the first after `every` seconds), and once a run is that long, one at each phase's
    start and end too. Time left is paced from the phase's first count: a run resumed at step
    400 of 1200 is timed on the steps it takes, not on 400 it did not."""

    def __init__(self, description: str, every: float = 30.0):
        import time

        self.clock = time.monotonic
        self.description, self.every = description, every
        self.completed, self.total, self.status = 0, None, ""
        self.t0 = self.last = self.clock()
        self.base: tuple[int, float] | None = None  # (count, time) the pace is measured from
        # a run shorter than `every` prints nothing: a quick error stays one line
        self.printed = False

    def _print(self) -> None:
        now = self.clock()
        parts = [f"{self.description}:"]
        if self.total:
            parts.append(f"{self.completed}/{self.total} ({self.completed / self.total:.0%})")
        elif self.completed:
            parts.append(str(self.completed))
        parts.append(f"{_duration(now - self.t0)} elapsed")
        if self.total and self.base and self.base[0] < self.completed < self.total:
            pace = (now - self.base[1]) / (self.completed - self.base[0])
            parts.append(f"about {_duration(pace * (self.total - self.completed))} left")
        if self.status:
            parts.append(self.status)
        console().print(escape(" ".join(parts)), soft_wrap=True)
        self.last = now

    def update(self, completed=None, total=None, status=None, description=None) -> None:
        new_phase = description is not None and description != self.description
        if new_phase:
            self.description, self.completed, self.total, self.t0 = (
                description,
                0,
                None,
                self.clock(),
            )
            self.base = None
        if completed is not None:
            if completed < self.completed:  # a second pass (fid's folder B): its own clock
                self.t0, self.base = self.clock(), None
            if self.base is None:
                self.base = (completed, self.clock())
            self.completed = completed
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        done = self.total is not None and self.completed >= self.total
        if self.clock() - self.last >= self.every or (self.printed and (done or new_phase)):
            self.printed = True
            self._print()


@contextmanager
def progress(description: str, total: int | None = None):
    """with progress("training", total) as bar: bar.update(completed=i, status="loss 0.1"). A
    live bar on a terminal, a line at least every 30 s in a log, nothing with --quiet."""
    if quiet():
        yield _Bar()
        return
    if not console().is_terminal:
        bar = _LineBar(description)
        bar.total = total
        yield bar
        return
    p = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console(),
        transient=False,
    )
    with p:
        task = p.add_task(description, total=total, status="")
        try:
            yield _RichBar(p, task)
        except BaseException:
            p.live.transient = True  # on an error or Ctrl-C the one-line message replaces the bar
            raise
