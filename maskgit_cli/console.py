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


def kv_table(title: str, items: dict[str, Any]) -> None:
    table(title, ["key", "value"], [(k, v) for k, v in items.items()])


class _Bar:
    """A rich progress bar driven by the core's callbacks: update(completed, **fields)."""

    def __init__(self, progress: Progress | None, task: int | None):
        self.progress, self.task = progress, task

    def update(
        self,
        completed: int | None = None,
        advance: int | None = None,
        total: int | None = None,
        status: str = "",
    ) -> None:
        if self.progress is None:
            return
        kw: dict[str, Any] = {"status": status}
        if completed is not None:
            kw["completed"] = completed
        if advance is not None:
            kw["advance"] = advance
        if total is not None:
            kw["total"] = total
        self.progress.update(self.task, **kw)


@contextmanager
def progress(description: str, total: int | None = None, enabled: bool = True):
    """with progress("training", total) as bar: bar.update(completed=i, status="loss 0.1")"""
    if not enabled:
        yield _Bar(None, None)
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
            yield _Bar(p, task)
        except BaseException:
            p.live.transient = True  # on an error or Ctrl-C the one-line message replaces the bar
            raise
