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
LR_KEPT_OPT = typer.Option(0.0, help="Learning rate of the prototypes that do not sit on an antitype (the "
                           "accepted ones); 0 keeps them on their patches. See docs/paper-regime.md.")
PUSH_AVOID_OPT = typer.Option(True, "--push-avoid/--no-push-avoid", help="Revision push: project a prototype only "
                              "onto patches nearer to it or to an accepted prototype than to every antitype.")
DISTINCT_OPT = typer.Option(True, "--distinct/--no-distinct", help="Revision push: no two prototypes on one patch "
                            "(the nearer prototype keeps a contested patch).")
BOX_MAP_OPT = typer.Option("after", "--box-map", help="Revision push boxes from the map of the pushed vector "
                           "(after) or, as the original push, of the vector before projection (before).")
ANTITYPES_OPT = typer.Option(
    None, "--antitypes", help="Decisions file to use (default: RUN/antitypes.json).", exists=False
)


class Criterion(str, Enum):
    box = "box"
    cell = "cell"


class Order(str, Enum):
    id = "id"
    suspicion = "suspicion"


ORDER_OPT = typer.Option(Order.id, "--order", help="Review order: id, or suspicion (background-like first, "
                         "scored from the run alone; see docs/review-effort.md).")
LOOK_ALIKES_OPT = typer.Option(False, "--look-alikes/--no-look-alikes",
                               help="After a reject, reject the offered look-alikes that are non-object too.")


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


def execute(fn: Callable[[], dict], as_json: bool, quiet: bool, show: Callable[[dict], Any] | None = None):
    """Run a stage and map its outcome to output and exit codes."""
    from protocli.console import QUIET, console
    from protocli.errors import BadInput

    QUIET["on"] = quiet
    try:
        result = fn()
    except BadInput as e:
        console.print(f"[red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the run is unchanged (training keeps its checkpoint for --resume)")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:  # anything else is our failure: exit 1, traceback on request
        if os.environ.get("PROTOCLI_DEBUG"):
            raise
        console.print(f"[red]failed:[/] {type(e).__name__}: {e} (set PROTOCLI_DEBUG=1 for the traceback)",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if show is not None and not quiet:
        show(result)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    return result


def kv(title: str):
    """A `show` for `execute`: the result as a key-value table titled `title`."""

    def show(result: dict):
        from protocli.console import print_kv

        print_kv(title, result)

    return show
