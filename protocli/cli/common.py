"""Shared pieces of the command line: option declarations, choice enums, and `execute`, which runs a
stage function and maps its outcome to output and exit codes (0 success, 2 bad input, 1 other
failures, 130 interrupted). Torch-free, like every module of this package."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from protocli.review import GRAPHICS

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
PUSH_MARGIN_OPT = typer.Option(0.5, help="Revision push: a patch counts as like the accepted prototypes when its "
                               "squared distance to the nearest one is below this times that to the nearest antitype.")
DISTINCT_OPT = typer.Option(True, "--distinct/--no-distinct", help="Revision push: no two prototypes on one patch "
                            "(the nearer prototype keeps a contested patch).")
BOX_MAP_OPT = typer.Option("after", "--box-map", help="Revision push boxes from the map of the pushed vector "
                           "(after) or, as the original push, of the vector before projection (before).")
WAIT_OPT = typer.Option(False, "--wait", help="If another protocli command is changing this run, wait for it "
                        "to finish instead of exiting with code 2.")
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


Graphics = Enum("Graphics", {g: g for g in GRAPHICS}, type=str)  # the TUI's one list of choices
GRAPHICS_HELP = f"Pictures: {', '.join(GRAPHICS[:-1])} or {GRAPHICS[-1]}."


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
            lock: Path | None = None, wait: bool = False, new_run: bool = False, spread: bool = False):
    """Run a stage and map its outcome to output and exit codes.

    `lock`: the run this command changes; its lock is held while `fn` runs (exit 2 naming the holder
    when another process has it, or wait for it with `wait`). `new_run`: the folder may not exist
    yet (train): it is created to hold the lock, and removed again if no run was made. Messages are
    printed without markup, so a path like `runs/x[old]` comes out as it is.

    Under torchrun with several processes, a command that can share its work (`spread`) runs on every
    process; any other command runs on rank 0 alone while the others exit at once. Only rank 0 holds
    the lock (only it writes) and prints the result, and a failure anywhere ends every process with
    one line and one exit code.
    """
    from protocli.console import QUIET, console
    from protocli.errors import BadInput
    from protocli.files import dumps
    from protocli.run import COMMITTED

    QUIET["on"] = quiet
    done_before = len(COMMITTED)
    team = _team()
    if team is not None and not spread and team.env_rank() != 0:
        return {}
    locked = lock is not None and (team is None or team.env_rank() == 0)
    try:
        result = _locked(fn, lock, wait, new_run) if locked else fn()
        if team is not None and spread:
            team.finish()
    except BadInput as e:
        _end(team, 2, console, "error: ", "red", str(e))
    except KeyboardInterrupt:
        _end(team, 130, console, "interrupted: ", "yellow", interrupted_message(COMMITTED[done_before:]))
    except typer.Exit:
        raise
    except Exception as e:  # anything else is our failure: exit 1, traceback on request
        if os.environ.get("PROTOCLI_DEBUG"):
            raise
        _end(team, 1, console, "failed: ", "red", f"{type(e).__name__}: {e} (set PROTOCLI_DEBUG=1 for the traceback)")
    if team is not None and team.env_rank() != 0:
        return result
    if show is not None and not quiet:
        show(result)
    if as_json:
        sys.stdout.write(dumps(result, indent=1, default=str) + "\n")
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


def _end(team, code: int, console, label: str, style: str, text: str):
    """Print the one line (plain text after a styled label) and exit with `code`; in a job of several
    processes only the first to fail speaks, and every process exits with its code."""
    from rich.text import Text

    def say(label: str, text: str) -> None:
        console.print(Text.assemble((label, style), text), highlight=False, soft_wrap=True)

    if team is None:
        say(label, text)
        raise typer.Exit(code) from None
    code, who = team.fail(code)
    if who == "own":
        say(label, text)
    elif who == "peer":
        say("failed: ", "another process of this job ended first (its message, if any, is above)")
    team.exit_now(code)


def _locked(fn: Callable[[], dict], run: Path, wait: bool, new_run: bool) -> dict:
    import shutil

    from protocli.lock import hold

    if not run.is_dir() and not new_run:
        return fn()  # no run there: the stage says so, naming the folder
    made = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        with hold(run, wait=wait):
            return fn()
    finally:
        if made and not (run / "manifest.json").exists():
            shutil.rmtree(run, ignore_errors=True)


def interrupted_message(committed: list[tuple[str, str]]) -> str:
    """What an interrupted command leaves: the stages it committed are kept, the one in progress is not."""
    tail = "the stage in progress was discarded (training keeps its checkpoint for --resume)"
    if not committed:
        return f"the run is unchanged: {tail}"
    runs: dict[str, list[str]] = {}
    for run, sid in committed:
        runs.setdefault(run, []).append(sid)
    kept = "; ".join(f"{', '.join(ids)} in {run}" for run, ids in runs.items())
    return f"committed before the interrupt and kept: {kept}; {tail}"


def say_error(text: str, code: int = 2):
    """One "error: ..." line on stderr and exit `code`, for faults found before a stage runs."""
    from rich.text import Text

    from protocli.console import console

    console.print(Text.assemble(("error: ", "red"), text), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def renamed(new, old, new_name: str, old_name: str, quiet: bool = False, how: str | None = None):
    """The value of an option that was renamed: `new` (the new spelling's value) or, when only the old,
    hidden spelling was given, `old`, after a one-line note on stderr (unless -q; `how` says what to
    write instead). Both, with different values: exit 2. Under torchrun only rank 0 prints the note."""
    if old is None:
        return new
    if new is not None and new != old:
        say_error(f"{old_name} is the old spelling of {new_name}: give one of them")
    if not quiet and os.environ.get("RANK", "0") == "0":
        from rich.text import Text

        from protocli.console import console

        console.print(Text.assemble(("note: ", "yellow"), f"{old_name} is deprecated and will go; "
                                    f"{how or 'write ' + new_name}"), highlight=False, soft_wrap=True)
    return old


def kv(title: str):
    """A `show` for `execute`: the result as a key-value table titled `title`."""

    def show(result: dict):
        from protocli.console import print_kv

        print_kv(title, result)

    return show
