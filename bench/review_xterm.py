"""The review TUI as a user sees it: xterm (Sixel-capable, `-ti vt340`) under Xvfb -> screenshots.

Usage:

    python bench/review_xterm.py RUN --out /tmp/review-shots [--graphics sixel halfcell]
    python bench/review_xterm.py --fake --out /tmp/review-shots     # a synthetic push, no run needed

For every graphics mode: copy RUN to a temporary folder (the review writes antitypes.json, the
user's run stays untouched), start `protocli review COPY --graphics G` in an xterm on a virtual X
display, press keys with xdotool and save a screenshot of the whole display after each step:

    G-1-gallery.png   the first screen (footer and pictures must be there without any key)
    G-2-help.png      `?`: the help overlay, no picture may cover its text
    G-3-closed.png    help closed again: the gallery with its pictures back
    G-4-detail.png    tab: the detail view
    G-5-gallery.png   tab: back to the gallery
    G-6-filter.png    f: the gallery filtered to the current card's class

Needs (Debian/Ubuntu packages; this script installs nothing):
    xterm xvfb xdotool imagemagick x11-apps
Screenshots are for a person to look at; nothing here asserts (tests/test_review_app.py does that
under Pilot).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"Xvfb": "xvfb", "xterm": "xterm", "xdotool": "xdotool", "import": "imagemagick"}
STEPS = [("1-gallery", None), ("2-help", "question"), ("3-closed", "Escape"), ("4-detail", "Tab"),
         ("5-gallery", "Tab"), ("6-filter", "f")]


def fake_run(folder: Path) -> Path:
    """A push of 40 prototypes with synthetic pictures (the tests' fake run)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _reviewutil import make_push

    make_push(folder / "run", P=40, K=4, k=3)
    return folder / "run"


def window_id(display: dict, timeout: float = 15.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["xdotool", "search", "--class", "xterm"], env=display,
                             capture_output=True, text=True).stdout.split()
        if out:
            return out[0]
        time.sleep(0.2)
    raise SystemExit("xterm did not open a window")


def shoot(display: dict, win: str, path: Path) -> None:
    # The xterm window only (Sixel pictures are part of its pixels, so they are in the picture).
    subprocess.run(["import", "-window", win, str(path)], env=display, check=True)
    print(f"  {path}")


def one_mode(run: Path, graphics: str, out: Path, display: dict, args) -> None:
    with tempfile.TemporaryDirectory(prefix="review-xterm-") as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache"))
        # Textual draws on stderr and the review refuses a redirected stream: both stay on the xterm.
        cmd = f"cd {ROOT} && {sys.executable} -m protocli review {copy} --graphics {graphics}; sleep 1"
        xterm = subprocess.Popen(
            ["xterm", "-ti", "vt340", "-geometry", args.geometry, "-fa", "Monospace", "-fs", str(args.font_size),
             "-xrm", "XTerm*numColorRegisters: 1024",
             "-bg", "black", "-fg", "white", "-e", "bash", "-c", cmd],
            env={**display, "COLORTERM": "truecolor"})
        try:
            win = window_id(display)
            subprocess.run(["xdotool", "windowfocus", "--sync", win], env=display, capture_output=True)
            time.sleep(args.settle)
            for name, key in STEPS:
                if key is not None:
                    subprocess.run(["xdotool", "key", "--window", win, key] if args.send_event else
                                   ["xdotool", "key", key], env=display, check=True)
                    time.sleep(args.pause)
                shoot(display, win, out / f"{graphics}-{name}.png")
            subprocess.run(["xdotool", "key", "q"], env=display, check=True)
            xterm.wait(timeout=15)
        finally:
            if xterm.poll() is None:
                xterm.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="run folder with a push (omit with --fake)")
    parser.add_argument("--fake", action="store_true", help="review a synthetic push instead of RUN")
    parser.add_argument("--out", type=Path, default=Path("review-shots"), help="folder for the PNGs")
    parser.add_argument("--graphics", nargs="+", default=["sixel", "halfcell"])
    parser.add_argument("--geometry", default="120x36", help="xterm columns x rows")
    parser.add_argument("--font-size", type=int, default=11)
    parser.add_argument("--settle", type=float, default=6.0, help="seconds from start to the first screenshot")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between a key and its screenshot")
    parser.add_argument("--display", default=":47")
    parser.add_argument("--send-event", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        print(f"missing tools; install the Debian packages: {' '.join(sorted(set(missing)))} "
              "(all needed: xterm xvfb xdotool imagemagick x11-apps)", file=sys.stderr)
        return 2
    if (args.run is None) == (not args.fake):
        parser.error("give RUN or --fake")
    args.out.mkdir(parents=True, exist_ok=True)
    xvfb = subprocess.Popen(["Xvfb", args.display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stderr=subprocess.DEVNULL)
    display = {**os.environ, "DISPLAY": args.display}
    display.pop("TMUX", None)  # auto graphics would pick half-blocks inside tmux
    try:
        time.sleep(1.0)
        with tempfile.TemporaryDirectory(prefix="review-fake-") as tmp:
            run = fake_run(Path(tmp)) if args.fake else args.run
            for graphics in args.graphics:
                print(f"{graphics}:")
                one_mode(run, graphics, args.out, display, args)
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
