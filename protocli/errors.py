"""Error kinds shared by every stage -> exit codes in the CLI.

`BadInput` is the user's fault (missing file, corrupt image, wrong JSON, mismatched checkpoint):
the CLI prints its one-line message and exits 2. Anything else is ours and exits 1.
"""

from __future__ import annotations

from pathlib import Path


class BadInput(Exception):
    """Bad input from the user. The message is one line that names the file, field or value."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
