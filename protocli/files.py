"""Atomic file writes and checked reads -> no half-written file, and one-line errors.

Every file protocli writes goes through `atomic_write*`: the bytes land in a temporary file in
the same folder, are flushed to disk, then renamed over the target. A killed process therefore
leaves either the old file or the new one. Reads of JSON raise `BadInput` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from protocli.errors import BadInput


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


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


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line. Used for per-epoch metrics; a torn last line is tolerated by readers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
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
