"""The command line's shape: --version, shell completion, status, progress bars, option names."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from protocli.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _quiet_again(monkeypatch):
    """Commands run here without -q switch bars and tables on; later tests expect them off."""
    from protocli.console import QUIET

    monkeypatch.setitem(QUIET, "on", QUIET["on"])


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


# -- protocli status ---------------------------------------------------------------------------------
def _status(run, *extra):
    res = runner.invoke(app, ["status", str(run), "--json", "--quiet", *extra])
    return res, (json.loads(res.stdout) if res.exit_code == 0 else None)


def test_status_lists_stages_pushes_decisions_and_metrics(tiny_run, decide):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    res, st = _status(tiny_run)
    assert res.exit_code == 0, res.output
    assert [s["id"] for s in st["stages"]] == [s["id"] for s in manifest["stages"]]
    assert [s["kind"] for s in st["stages"]] == ["train", "push", "last"]
    assert st["stages"][0]["at"] == manifest["stages"][0]["at"]
    last = manifest["stages"][-1]
    assert st["metrics"] == {"stage": last["id"], "test_accuracy": last["test_accuracy"],
                             "train_accuracy": last["train_accuracy"]}
    assert st["latest_push"] == "002-push" and st["push_is_current"] is True
    assert st["decisions"]["rejected"] == 0 and st["decisions"]["undecided"] == 8

    rejected = decide.lone(tiny_run)[:3]
    decide.reject(tiny_run, rejected)
    _, st = _status(tiny_run)
    d = st["decisions"]
    assert (d["push"], d["rejected"], d["accepted"], d["undecided"]) == ("002-push", 3, 5, 0)
    assert d["antitypes"] == len(json.loads((tiny_run / "antitypes.json").read_text())["antitypes"]) == 3
    assert st["pushes"] == [{"push": "002-push", "at": manifest["stages"][1]["at"], "prototypes": 8,
                             "unique": manifest["stages"][1]["unique"], "rejected": 3, "accepted": 5}]

    # A mask stage records its test accuracy as accuracy_after: the latest metrics are that stage's.
    res = runner.invoke(app, ["mask", str(tiny_run), "--last-epochs", "1", "-q", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    after = json.loads(res.stdout)["accuracy_after"]
    _, st = _status(tiny_run)
    assert st["stages"][-1]["kind"] == "mask"
    assert st["metrics"]["stage"] == st["stages"][-1]["id"] and st["metrics"]["test_accuracy"] == after


def test_status_names_a_damaged_file(tiny_run):
    (tiny_run / "antitypes.json").write_text('{"version": 1, "decisions": [{"prototype": 99}]}')
    res, _ = _status(tiny_run)
    assert res.exit_code == 2 and "antitypes.json" in res.output
    (tiny_run / "manifest.json").write_text("{not json")
    res, _ = _status(tiny_run)
    assert res.exit_code == 2 and "manifest.json" in res.output
    res, _ = _status(tiny_run / "nope")
    assert res.exit_code == 2 and "not found" in res.output


def test_status_reads_a_locked_run_without_torch(tiny_run):
    fd = os.open(tiny_run / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another writer would hold it
        assert runner.invoke(app, ["simulate", str(tiny_run), "-q"]).exit_code == 2  # a writer waits
        code = (f"import sys\nfrom protocli.status import run_status\nst = run_status({str(tiny_run)!r})\n"
                f"print(len(st['stages']), {HEAVY})")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "3 []"
    finally:
        os.close(fd)


# -- progress bars -----------------------------------------------------------------------------------
def test_data_synth_and_check_show_a_progress_bar(tmp_path):
    data = tmp_path / "d"
    res = runner.invoke(app, ["data", "synth", str(data), "--classes", "2", "--train-per-class", "2",
                              "--test-per-class", "1", "--size", "32"])
    assert res.exit_code == 0, res.output
    assert "drawing images" in res.stderr and "6/6" in res.stderr
    res = runner.invoke(app, ["data", "check", str(data)])
    assert res.exit_code == 0, res.output
    assert "checking images and masks" in res.stderr and "6/6" in res.stderr
    res = runner.invoke(app, ["data", "check", str(data), "-q", "--json"])
    assert res.exit_code == 0 and "checking" not in res.stderr


# -- --criterion and --device where a command computes ----------------------------------------------
def test_report_and_evaluate_take_criterion_and_device(tiny_run):
    for cmd in ("report", "evaluate"):
        out = runner.invoke(app, [cmd, "--help"]).output
        assert "--criterion" in out and "--device" in out
    res = runner.invoke(app, ["evaluate", str(tiny_run), "--criterion", "cell", "--device", "cpu", "--json", "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["criterion"] == "cell" and data["non_object"] == data["non_object_cell"]
    res = runner.invoke(app, ["report", str(tiny_run), "--criterion", "pixel", "-q"])
    assert res.exit_code == 2 and "pixel" in res.output


# -- option names: --out only forks a run; train takes the run as an argument ------------------------
def test_out_means_a_new_run_only():
    def options(cmd):
        return runner.invoke(app, [cmd, "--help"]).output

    for cmd in ("mask", "prune", "revise", "rounds"):
        assert "--out" in options(cmd)
    for cmd, new in (("report", "--dir"), ("explain", "--png"), ("demo", "--dir")):
        assert new in options(cmd) and "--out" not in options(cmd)  # the old spelling is hidden
    assert "--run" not in options("train")


def _note(res, old):
    return [ln for ln in res.stderr.splitlines() if ln.startswith("note:") and f"{old} is deprecated" in ln]


def test_train_takes_the_run_as_its_second_argument(tiny_data, tiny_run):
    # An existing run is refused before any training: what matters is which folder train was given.
    for spelling in ([str(tiny_run)], ["--run", str(tiny_run)], ["--run-dir", str(tiny_run)]):
        res = runner.invoke(app, ["train", str(tiny_data), *spelling, "--backbone", "tiny"])
        assert res.exit_code == 2 and "already exists" in res.stderr and str(tiny_run) in res.stderr
        assert len(_note(res, spelling[0])) == (1 if spelling[0].startswith("--") else 0), res.stderr
    res = runner.invoke(app, ["train", str(tiny_data), "--run", str(tiny_run), "-q"])
    assert res.exit_code == 2 and not _note(res, "--run")  # -q: no note
    res = runner.invoke(app, ["train", str(tiny_data)])
    assert res.exit_code == 2 and res.stderr.strip() == ("error: train needs a run folder to create: "
                                                        "protocli train DATA RUN")
    res = runner.invoke(app, ["train", str(tiny_data), str(tiny_run), "--run", str(tiny_run / "other")])
    assert res.exit_code == 2 and "--run is the old spelling of RUN" in res.stderr


def test_old_out_spellings_still_work_with_a_note(tiny_run, tiny_data, tmp_path):
    res = runner.invoke(app, ["report", str(tiny_run), "--out", str(tmp_path / "r"), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["out"] == str(tmp_path / "r") and len(_note(res, "--out")) == 1
    assert "write --dir" in _note(res, "--out")[0]
    image = next((tiny_data / "images").rglob("*.png"))
    res = runner.invoke(app, ["explain", str(tiny_run), str(image), "--out", str(tmp_path / "e.png"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["png"] == str(tmp_path / "e.png") and "write --png" in _note(res, "--out")[0]
    # demo refuses a data folder that is not a synthetic dataset, naming it: the old --out was used.
    (tmp_path / "demo" / "data").mkdir(parents=True)
    (tmp_path / "demo" / "data" / "x").write_text("")
    for spelling in ("--dir", "--out"):
        res = runner.invoke(app, ["demo", spelling, str(tmp_path / "demo")])
        assert res.exit_code == 2 and str(tmp_path / "demo" / "data") in res.stderr
        assert len(_note(res, "--out")) == (spelling == "--out")
    res = runner.invoke(app, ["report", str(tiny_run), "--dir", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--out is the old spelling of --dir" in res.stderr
