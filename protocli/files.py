"""Atomic file writes and checked reads -> no half-written file, files others can read, one-line errors.

Every file protocli writes goes through `atomic_write*`: the bytes land in a temporary file in the
same folder, which is then renamed over the target, so a killed process leaves either the old file
or the new one. The temporary file is created like `open()` creates files (mode 0666 minus the
umask), so a colleague in your group can read reports and runs where your umask allows it.

Durability (surviving a power cut, not just a killed process) costs a sync. A file written on its
own (antitypes.json, rounds.json, a report) is synced before its rename. Files written inside a
stage folder that is being built (`deferred`) are not: the stage commit syncs the whole folder once
before the manifest names it (protocli.run), so a push writing hundreds of pictures pays for one
sync, not hundreds. Reads of JSON raise `BadInput` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from protocli.errors import BadInput


def now_iso() -> str:
    """The UTC time as run files record it (manifest, antitypes.json): 2026-01-31T12:00:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

_DEFERRED: set[Path] = set()  # stage folders under construction: no per-file sync below them
_LOCK = threading.Lock()


@contextmanager
def deferred(folder: Path):
    """Within this block, files written below `folder` are not synced one by one (see `sync_tree`)."""
    folder = Path(folder).resolve()
    with _LOCK:
        _DEFERRED.add(folder)
    try:
        yield
    finally:
        with _LOCK:
            _DEFERRED.discard(folder)


def _is_deferred(path: Path) -> bool:
    if not _DEFERRED:
        return False
    parents = set(path.resolve().parents)
    with _LOCK:
        return any(d in parents for d in _DEFERRED)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """Flush everything written under `folder` to disk with one call.

    Linux has syncfs(2), which flushes the one file system holding `folder`; elsewhere os.sync()
    flushes all of them. Either way the cost does not grow with the number of files written.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(folder, os.O_RDONLY)
            try:
                if libc.syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            pass
    os.sync()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable = not _is_deferred(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 applies the umask exactly as open() does (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Whatever happened (including KeyboardInterrupt), the target is untouched.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def strict(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None: strict JSON readers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 1, default=None) -> str:
    """JSON text that any strict reader accepts (NaN and Infinity become null)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False, default=default)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or unparsable file is BadInput naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {what}: {e}", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from None
    except RecursionError:
        raise BadInput("not valid JSON (nested too deeply)", path) from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. Used for per-epoch metrics; a torn last line is tolerated by readers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps(record, indent=None) + "\n")
        fh.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file, skipping a torn final line (a process killed mid-append)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise BadInput(f"line {i + 1} is not valid JSON", path) from None
    return out
