"""Smoke test in a real terminal: tmux runs `python -m protocli.review` (auto graphics, which means
half-blocks inside tmux), keys go in with send-keys, and antitypes.json must hold the decisions.
Skipped when tmux is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reviewutil import make_push

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def _wait(pred, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    return pred()


def test_review_in_tmux(tmp_path):
    run = tmp_path / "run"
    make_push(run, P=30)
    sock = f"protocli-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    cmd = (f"cd {ROOT} && TERM=xterm-256color COLORTERM=truecolor PYTHONPATH={ROOT} "
           f"{sys.executable} -m protocli.review {run}; echo EXIT=$?; sleep 30")
    subprocess.run([*tmux, "new-session", "-d", "-s", "app", "-x", "80", "-y", "24", cmd], check=True)

    def screen(ansi: bool = False) -> str:
        args = [*tmux, "capture-pane", "-t", "app", "-p"] + (["-e"] if ansi else [])
        return subprocess.run(args, capture_output=True, text=True).stdout

    try:
        assert _wait(lambda: "reviewed 0/30" in screen()), screen()
        for key in ["r", "l", "a", "space", "r"]:  # space skips undecided #3: it goes to the next one
            subprocess.run([*tmux, "send-keys", "-t", "app", key], check=True)
            time.sleep(0.15)
        assert _wait(lambda: "reviewed 3/30" in screen()), screen()
        assert _wait(lambda: "▀" in screen(ansi=True)), "no half-block pictures on screen"
        data = json.loads((run / "antitypes.json").read_text())
        assert {d["prototype"]: d["verdict"] for d in data["decisions"]} == {0: "reject", 2: "accept", 4: "reject"}
        subprocess.run([*tmux, "send-keys", "-t", "app", "q"], check=True)
        text = _wait(lambda: "EXIT=" in screen() and screen())
        assert "EXIT=0" in text and '"reviewed": 3' in text.replace("\n", "")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        socket = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / sock
        socket.unlink(missing_ok=True)
