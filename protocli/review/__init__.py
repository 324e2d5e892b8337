"""`protocli review RUN`: a Textual app to accept or reject the prototypes of a run's latest push.

Input: a run folder with at least one stages/NNN-push. Output: the run's antitypes.json (written
after every decision) and a summary dict {push, total, reviewed, rejected, accepted, file}.

Importing this package is cheap: textual, textual_image and numpy load inside `review()`.
Only this package imports Textual (a test checks that the rest of protocli never does).
"""

from __future__ import annotations

import sys
from pathlib import Path

from protocli.errors import BadInput

GRAPHICS = ("auto", "kitty", "sixel", "halfcell", "none")  # --graphics choices: the one list (CLI, -m, renderer)

__all__ = ["review", "check_terminal"]


def check_terminal() -> None:
    """BadInput unless stdin, stdout and stderr are terminals.

    textual_image crashes in termios when stdin is not a TTY, and Textual draws on stderr, so a
    redirected stream would give a crash or an invisible UI instead of this one line.
    """
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, f"__{name}__", None)
        try:
            tty = stream is not None and stream.isatty()
        except ValueError:  # closed stream
            tty = False
        if not tty:
            raise BadInput(f"protocli review needs a terminal, but {name} is not a TTY")


def review(run_dir: Path, graphics: str = "auto", push: str | None = None, order: str = "id",
           wait: bool = False) -> dict:
    """Open the review app on the run's latest push (or `push`) and block until the user quits.

    `order` "suspicion" shows background-like prototypes first: the scores come from the push's
    suspicion.json, computed here (torch, the latent cache) when missing.

    Decisions of the previous push carry over where a prototype still sits on the same patch.
    The app holds the run lock while it is open, so no other command changes antitypes.json under
    it; when another command holds the lock, it opens read-only (or, with `wait`, waits for it).
    BadInput: no push in the run, unknown push or graphics value, a bad antitypes.json, no terminal.
    """
    from contextlib import ExitStack

    from protocli import lock
    from protocli.review.pictures import GRAPHICS, make_renderer
    from protocli.review.state import check_push, open_state

    if graphics not in GRAPHICS:
        raise BadInput(f"--graphics is {graphics!r}, expected one of {', '.join(GRAPHICS)}")
    if order not in ("id", "suspicion"):
        raise BadInput(f"--order is {order!r}, expected id or suspicion")
    # Check the run before the terminal: a script without a TTY still learns what is wrong with it.
    run_dir = Path(run_dir)
    check_push(run_dir, push)
    check_terminal()
    with ExitStack() as stack:
        busy = None
        try:
            stack.enter_context(lock.hold(run_dir, wait=wait))
        except lock.Busy:
            busy = f"read-only: {run_dir} is in use by {lock.describe(lock.holder(run_dir))}"
        state = open_state(run_dir, push, busy=busy)
        if order == "suspicion":
            if state.suspicion is None:
                from protocli.console import info
                from protocli.suspicion import ensure

                info("computing suspicion scores (once per push)")
                state.set_suspicion(ensure(run_dir, state.push_dir, len(state.protos)))
            state.set_sort("suspicion")
            state.goto(0)  # start at the most suspicious card
            state.message = busy or ""
        renderer = make_renderer(graphics)  # may probe the terminal: must happen before App.run()
        from protocli.review.app import ReviewApp

        ReviewApp(state, renderer).run()
        return state.summary()
