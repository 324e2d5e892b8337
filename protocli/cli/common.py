"""Shared pieces of the command line: option declarations, choice enums, and `execute`, which runs a
stage function and maps its outcome to output and exit codes (0 success, 2 bad input, 1 other
failures, 130 interrupted). Torch-free, like every module of this package."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any

import typer

JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON on stdout (tables go to stderr).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars or tables on stderr.")
DEVICE_OPT = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
SEED_OPT = typer.Option(0, help="Random seed.")
OUT_RUN_OPT = typer.Option(None, "--out", help="Fork the run into this new folder first and change the fork.")
LR_PROTOTYPES_OPT = typer.Option(3e-2, help="Learning rate of the prototypes (authors' code: 1e-3).")
LR_KEPT_OPT = typer.Option(None, help="Learning rate of the prototypes that do not sit on an antitype "
                           "(default: --lr-prototypes); see docs/revision.md for the trade-off.")
ANTITYPES_OPT = typer.Option(
    None, "--antitypes", help="Decisions file to use (default: RUN/antitypes.json).", exists=False
)


class Criterion(str, Enum):
    box = "box"
    cell = "cell"


class Graphics(str, Enum):
    auto = "auto"
    kitty = "kitty"
    sixel = "sixel"
    halfcell = "halfcell"
    none = "none"


class User(str, Enum):
    simulated = "simulated"
    tui = "tui"


class Distance(str, Enum):
    l2 = "l2"
    squared = "squared"


class Reduce(str, Enum):
    max = "max"
    mean = "mean"


def execute(fn: Callable[[], dict], as_json: bool, quiet: bool, show: Callable[[dict], Any] | None = None,
            spread: bool = False):
    """Run a stage and map its outcome to output and exit codes.

    Under torchrun with several processes, a command that can share its work (`spread`) runs on every
    process; any other command runs on rank 0 alone while the others exit at once. Only rank 0 prints
    the result, and a failure anywhere ends every process with one line and one exit code."""
    from rich.markup import escape

    from protocli.console import QUIET, console
    from protocli.errors import BadInput

    QUIET["on"] = quiet
    team = _team()
    if team is not None and not spread and team.env_rank() != 0:
        return {}
    try:
        result = fn()
        if team is not None and spread:
            team.finish()
    except BadInput as e:
        _end(team, 2, console, f"[red]error:[/] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)
    except KeyboardInterrupt:
        _end(team, 130, console,
             "[yellow]interrupted[/]: the run is unchanged (training keeps its checkpoint for --resume)")
    except typer.Exit:
        raise
    except Exception as e:  # anything else is our failure: exit 1, traceback on request
        if os.environ.get("PROTOCLI_DEBUG"):
            raise
        _end(team, 1, console, f"[red]failed:[/] {type(e).__name__}: {escape(str(e))} "
             "(set PROTOCLI_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
    if team is not None and team.env_rank() != 0:
        return result
    if show is not None and not quiet:
        show(result)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _team():
    """protocli.distributed when torchrun started several processes, else None (and torch stays unimported)."""
    try:
        several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        several = False
    if not several:
        return None
    from protocli import distributed

    return distributed


def _end(team, code: int, console, line: str, **style):
    """Print the one line and exit with `code`; in a job of several processes only the first to fail
    speaks, and every process exits with its code."""
    if team is None:
        console.print(line, **style)
        raise typer.Exit(code) from None
    code, say = team.fail(code)
    if say == "own":
        console.print(line, **style)
    elif say == "peer":
        console.print("[red]failed:[/] another process of this job ended first (its message, if any, is above)")
    team.exit_now(code)


def kv(title: str):
    """A `show` for `execute`: the result as a key-value table titled `title`."""

    def show(result: dict):
        from protocli.console import print_kv

        print_kv(title, result)

    return show
