"""CLI contract: fast start (no torch at import), exit codes, --json on stdout, one-line errors."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from protocli.cli import app

runner = CliRunner()


def test_cli_import_is_light():
    code = ("import sys, protocli.cli; heavy = [m for m in ('torch', 'torchvision', 'textual', 'matplotlib') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("data", "train", "push", "evaluate", "simulate", "mask", "revise", "rounds", "review", "report",
                "explain", "demo"):
        assert cmd in res.output


def test_bad_input_exits_2_with_one_line(tmp_path):
    res = runner.invoke(app, ["push", str(tmp_path / "nope")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "not found" in lines[0]


def test_evaluate_json_on_stdout(tiny_run):
    res = runner.invoke(app, ["evaluate", str(tiny_run), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["prototypes"] == 8 and "accuracy" in data


def test_train_refuses_existing_run(tiny_data, tiny_run):
    res = runner.invoke(app, ["train", str(tiny_data), str(tiny_run), "--backbone", "tiny", "-q"])
    assert res.exit_code == 2
    assert "already exists" in res.output
