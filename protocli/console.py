"""Terminal output helpers -> a stderr Console, progress bars with ETA, summary tables; and the
cancel check of long loops.

Everything human-facing goes to stderr so that stdout stays clean for `--json`. A thread that runs
stage code in the background (the review TUI's loaders) installs a check with `cancellable`; every
progress-bar step and every batch of the other long loops then calls `check_cancel`, which raises
`Cancelled` once the check says stop. Without a check installed (the CLI) it does nothing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

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

console = Console(stderr=True)
# Set by the CLI's --quiet (and by tests) to silence bars and tables.
QUIET = {"on": False}


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=QUIET["on"],
    )


class Cancelled(Exception):
    """A background caller asked a long loop to stop (see `cancellable`)."""


_cancel = threading.local()


@contextmanager
def cancellable(check):
    """Within the block, on this thread, `check_cancel` raises Cancelled when `check()` is true."""
    previous = getattr(_cancel, "check", None)
    _cancel.check = check
    try:
        yield
    finally:
        _cancel.check = previous


def check_cancel() -> None:
    check = getattr(_cancel, "check", None)
    if check is not None and check():
        raise Cancelled()


@contextmanager
def progress_bar(description: str, total: int | None):
    """Yield `advance(n=1, **fields)`; shows a bar with ETA on stderr."""
    with make_progress() as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            check_cancel()
            if info is None:
                prog.advance(task, n)
            else:
                prog.update(task, advance=n, info=info)

        yield advance


def print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    """A summary table on stderr from a list of dicts (floats shown with 3 decimals)."""
    if QUIET["on"] or not rows:
        return
    columns = columns or list(rows[0].keys())
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*[fmt(r.get(c)) for c in columns])
    console.print(table)


def print_kv(title: str, data: dict) -> None:
    """A two-column table of a flat dict (nested values skipped)."""
    rows = [{"what": k, "value": v} for k, v in data.items() if not isinstance(v, (dict, list))]
    print_table(title, rows, ["what", "value"])


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def info(msg: str) -> None:
    """A line on stderr unless -q; printed as it is (a path holding [brackets] is not markup)."""
    if not QUIET["on"]:
        console.print(msg, highlight=False, markup=False)


def warn(msg: str) -> None:
    """A warning on stderr unless -q (errors are printed by the CLI whatever -q says)."""
    if not QUIET["on"]:
        from rich.text import Text

        console.print(Text.assemble(("warning: ", "yellow"), msg), highlight=False)
