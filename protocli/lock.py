"""The run lock: one writing command per run at a time -> RUN/.lock, held by a kernel file lock.

Writers (train, push, simulate, review, mask, revise, rounds) hold the lock from before they read
the run until they exit; readers (evaluate, report, explain, status) take none, because a stage becomes
visible in one atomic step (protocli.run). A second writer gets BadInput (exit 2) naming the
holder's PID, command, host and start time, or with `wait=True` blocks until the holder is done.

The lock is `fcntl.flock` on `RUN/.lock`, not the mere existence of a file: the kernel releases it
when its process dies however it dies (kill -9, out of memory), so a dead holder never leaves a
stale lock to clean up, and there is no PID-reuse or take-over race. On network file systems Linux
maps flock onto the NFS lock manager. The file's content (a JSON line: pid, command, host,
started) only tells the next writer whom it waits for; it is rewritten by every holder.

Within one process the lock is re-entrant: `rounds` holds it and calls push, simulate and revise,
whose stages take it again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from protocli.errors import BadInput

LOCK = ".lock"


class Busy(BadInput):
    """The run's lock is held by another process (exit 2, like any BadInput)."""

_HELD: dict[Path, list] = {}  # resolved run path -> [fd, depth]


def _key(run_dir) -> Path:
    return Path(run_dir).resolve()


def command_line() -> str:
    """This process's command line as the holder's "command" (shortened)."""
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-m") or argv[0].startswith("python"):
        argv[0] = "protocli"
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def holder(run_dir) -> dict | None:
    """What the lock file says about its holder (may describe a finished process: it is only a note)."""
    try:
        text = (Path(run_dir) / LOCK).read_text(encoding="utf-8").strip()
        info = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(info: dict | None) -> str:
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} ({info.get('command', '?')}) on {info.get('host', '?')} "
            f"since {info.get('started', '?')}")


def held(run_dir) -> bool:
    """True when this process holds the run's lock."""
    return _key(run_dir) in _HELD


def _acquire(run_dir, command: str | None, wait: bool) -> None:
    import fcntl

    key = _key(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    if not key.is_dir():
        raise BadInput("run folder not found", run_dir)
    path = key / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise BadInput(f"cannot open the run's lock file ({e.strerror}); is the run yours to change?", path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = holder(key)
            for _ in range(20):  # the holder may be between taking the lock and writing its note
                if info:
                    break
                time.sleep(0.01)
                info = holder(key)
            if not wait:
                raise Busy(f"in use by {describe(info)}; wait for it to finish, or pass --wait",
                           run_dir) from None
            from protocli.console import info as say

            say(f"waiting for {describe(info)} to finish with {run_dir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        note = {"pid": os.getpid(), "command": command or command_line(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = [fd, 1]


def _release(run_dir) -> None:
    key = _key(run_dir)
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _HELD[key]
        os.close(entry[0])  # closing the last descriptor releases the flock


@contextmanager
def hold(run_dir, command: str | None = None, wait: bool = False):
    """Hold the run's lock for the block (re-entrant within a process)."""
    _acquire(run_dir, command, wait)
    try:
        yield
    finally:
        _release(run_dir)


def acquire(run_dir, command: str | None = None, wait: bool = False) -> None:
    """Take the run's lock until this process exits (for a run this process just created)."""
    _acquire(run_dir, command, wait)
