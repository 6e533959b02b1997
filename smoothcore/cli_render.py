"""What the command line shows: rich consoles, progress bars, tables of certified accuracy, error messages."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from smoothcore.errors import SmoothcoreError

if TYPE_CHECKING:
    import pandas as pd


def console(stderr: bool = False) -> Console:
    """Rich console; when output is not a terminal (pipes, CI, tests) tables get room instead of 80 columns."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)


err_console = console(stderr=True)


def fail(exc: SmoothcoreError) -> None:
    """A user mistake: its message and hint, status 2, no traceback."""
    err_console.print(f"[bold red]Error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]Hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    sys.exit(2)


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=disable,
    )


def print_table(table: pd.DataFrame, title: str) -> None:
    """A table of certified accuracy (:func:`smoothcore.report.certified_accuracy_table`) on standard output."""
    t = Table(title=title)
    for col in table.columns:
        t.add_column(str(col), justify="left" if col in ("run", "norm") else "right")
    for _, row in table.iterrows():
        t.add_row(*[_cell(col, v) for col, v in row.items()])
    console().print(t)


def _cell(col: str, value: Any) -> str:
    if col == "ACR":
        return f"{value:.3f}"
    if col == "images":
        return str(int(value))
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
