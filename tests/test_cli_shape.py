"""The command line's shape: --version, shell completion, status, progress bars, option names."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from typer.testing import CliRunner

from protocli.cli import app

runner = CliRunner()
HEAVY = "[m for m in ('torch', 'torchvision', 'textual', 'matplotlib') if m in sys.modules]"


def test_version_prints_the_installed_version_without_torch():
    code = ("import sys\nfrom protocli.cli import app\ntry:\n    app(['--version'])\nexcept SystemExit as e:\n"
            f"    print('rc', e.code, {HEAVY})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == f"protocli {version('protocli')}"
    assert lines[1] == "rc 0 []"


def test_help_offers_version_and_completion():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for opt in ("--version", "--install-completion", "--show-completion"):
        assert opt in res.output
