"""What a user can rely on when things go wrong (README "What happens when things go wrong"):
messages that print paths as they are and tell the truth, damaged run files as exit 2, files others
can read, one sync per stage, strict JSON, the review TUI holding the run lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from protocli import files, lock
from protocli.cli import app
from protocli.cli.common import execute
from protocli.console import QUIET, console, warn
from protocli.errors import BadInput
from protocli.run import Run, load_weights

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


# -- 1. paths with square brackets ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["x[/old]", "x[old]", "[bold]y"])
def test_bracketed_path_prints_whole_and_exits_2(tmp_path, name):
    res = runner.invoke(app, ["evaluate", str(tmp_path / name)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: {tmp_path / name}: run folder not found"


def test_warning_with_brackets_prints_whole():
    with console.capture() as cap:
        warn("class [odd]_bird has no image in runs/x[/old]")
    assert cap.get().strip() == "warning: class [odd]_bird has no image in runs/x[/old]"


# -- 7. messages that are true --------------------------------------------------------------------
def test_quiet_silences_warnings():
    QUIET["on"] = True
    with console.capture() as cap:
        warn("something odd")
    assert cap.get() == ""


def fake_run(path: Path) -> Run:
    return Run.create(path, data_root=path.parent, crop=True, fingerprint="f", model_cfg={"backbone": "tiny"},
                      train_cfg={}, seed=0, device="cpu")


def test_ctrl_c_names_the_stages_already_committed(tmp_path):
    run = fake_run(tmp_path / "run")

    def two_stages_then_ctrl_c():
        with run.stage("revise"):
            pass
        with run.stage("push"):
            pass
        with run.stage("last"):
            raise KeyboardInterrupt

    with console.capture() as cap, pytest.raises(typer.Exit) as ex:
        execute(two_stages_then_ctrl_c, False, True, lock=run.path)
    msg = cap.get()
    assert ex.value.exit_code == 130
    assert "001-revise, 002-push" in msg and "unchanged" not in msg and str(run.path) in msg
    assert [s["id"] for s in Run.open(run.path).stage_log()] == ["001-revise", "002-push"]

    def ctrl_c():
        raise KeyboardInterrupt

    with console.capture() as cap, pytest.raises(typer.Exit):
        execute(ctrl_c, False, True)
    assert "the run is unchanged" in cap.get()


# -- 2. damaged files inside a run ----------------------------------------------------------------
def test_push_weights_that_do_not_load_exit_2(tiny_run):
    push = Run.open(tiny_run).require_push()
    (push / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    res = runner.invoke(app, ["simulate", str(tiny_run), "-q"])
    assert res.exit_code == 2, res.output
    assert "model.safetensors: not a readable safetensors file" in res.output.strip()


def test_config_metadata_that_is_not_json_is_bad_input(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file

    src = Run.open(tiny_run).weights_path
    for config, fault in (("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"),
                          ('{"num_classes": "four"}', "config"), ('{"no_such_field": 1}', "no_such_field")):
        bad = tmp_path / "bad.safetensors"
        save_file(load_file(str(src)), str(bad), metadata={"config": config})
        with pytest.raises(BadInput, match=fault) as e:
            load_weights(bad)
        assert str(bad) in str(e.value)


def test_manifest_without_data_or_train_exits_2(tiny_run):
    path = tiny_run / "manifest.json"
    good = json.loads(path.read_text())
    for key in ("data", "train"):
        doc = dict(good)
        del doc[key]
        path.write_text(json.dumps(doc))
        res = runner.invoke(app, ["evaluate", str(tiny_run), "-q"])
        assert res.exit_code == 2 and res.output.strip().endswith(f"manifest.json: {key} is missing"), res.output


# -- 8. strict JSON ---------------------------------------------------------------------------------
def test_push_with_a_class_without_training_images_writes_strict_json(tiny_run):
    from protocli.cache import latents
    from protocli.push import push_model
    from protocli.runfiles import read_push_doc

    run = Run.open(tiny_run)
    model, cub = run.load_model(), run.cub()
    z, y = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=torch.device("cpu"))
    keep = y != 0  # class 0 has no training image
    push_model(run, model, cub, z[keep], y[keep], torch.device("cpu"))
    push = run.latest_push()

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    for path in (push / "prototypes.json", tiny_run / "manifest.json"):
        json.loads(path.read_text(), parse_constant=no_constants)
    doc = read_push_doc(push)
    assert [p["projection_distance"] for p in doc["prototypes"] if p["class"] == 0] == [None, None]
    assert all(p["projection_distance"] is not None for p in doc["prototypes"] if p["class"] != 0)


def test_json_output_is_strict():
    assert files.dumps({"a": float("inf"), "b": [float("nan"), 1.5]}, indent=None) == '{"a": null, "b": [null, 1.5]}'


# -- 5. files others can read -------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run = fake_run(tmp_path / "run")
        with run.stage("push") as st:
            files.atomic_write_bytes(st.dir / "patches" / "0000.png", b"png")
            files.atomic_write_json(st.dir / "prototypes.json", {})
        written = [tmp_path / "run" / "manifest.json", run.latest_push() / "patches" / "0000.png",
                   run.latest_push() / "prototypes.json", files.atomic_write_text(tmp_path / "report.md", "x")]
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}


# -- 6. one sync per stage -------------------------------------------------------------------------------
def test_push_syncs_once_however_many_pictures(tiny_run, monkeypatch):
    from protocli.push import push_run

    calls = {"fsync": 0, "sync_tree": 0}
    real_fsync, real_tree = os.fsync, files.sync_tree

    def fsync(fd):
        calls["fsync"] += 1
        return real_fsync(fd)

    def tree(folder):
        calls["sync_tree"] += 1
        return real_tree(folder)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr("protocli.run.sync_tree", tree)
    push_run(tiny_run, torch.device("cpu"))
    pictures = sum(1 for _ in Run.open(tiny_run).latest_push().rglob("*.png"))
    assert pictures >= 60
    assert calls["sync_tree"] == 1 and calls["fsync"] <= 3  # the manifest, its folder; not one per picture


# -- 3. the review TUI holds the run lock while it is open ---------------------------------------------
HOLDER = r"""
import sys, time
from protocli import lock
lock.acquire(sys.argv[1], "protocli simulate " + sys.argv[1])
print("ready", flush=True)
time.sleep(30)
"""


def open_review(run: Path, monkeypatch) -> dict:
    """review() with the terminal parts replaced: records what the app would see."""
    import protocli.review as review_pkg
    from protocli.review import app as app_mod
    from protocli.review import pictures

    seen = {}

    def run_app(self):
        seen.update(state=self.state, held=lock.held(run))

    monkeypatch.setattr(review_pkg, "check_terminal", lambda: None)
    monkeypatch.setattr(pictures, "make_renderer", lambda graphics: pictures.Renderer("none"))
    monkeypatch.setattr(app_mod.ReviewApp, "run", run_app)
    review_pkg.review(run, graphics="none")
    return seen


def test_review_holds_the_run_lock_or_opens_read_only(tmp_path, monkeypatch):
    from _reviewutil import make_push

    run = tmp_path / "run"
    make_push(run, "002-push", pictures=False)
    seen = open_review(run, monkeypatch)
    assert seen["held"] and not seen["state"].read_only
    assert not lock.held(run)  # released when the app closes

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        seen = open_review(run, monkeypatch)
        state = seen["state"]
        assert not seen["held"] and state.read_only
        assert f"pid {holder.pid} (protocli simulate" in state.message
        assert not state.decide("reject") and not (run / "antitypes.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_fork_copies_only_committed_stages(tmp_path):
    run = fake_run(tmp_path / "run")
    with run.stage("train"):
        pass
    (run.path / "stages" / "002-push").mkdir()  # left by a writer killed before its commit
    fork = run.fork(tmp_path / "fork")
    assert sorted(p.name for p in (fork.path / "stages").iterdir()) == ["001-train"]
    assert fork.manifest["forked_from"][0]["run"] == str(run.path.resolve())


def test_damaged_rounds_json_is_bad_input(tmp_path):
    from protocli.runfiles import read_rounds

    path = tmp_path / "rounds.json"
    assert read_rounds(path) == []
    for doc, fault in (({"rounds": {}}, "rounds is {}"), ({"rounds": [1]}, "rounds[0] is 1"),
                       ({"rounds": [{"round": 0, "clicks": "many"}]}, "rounds[0].clicks is 'many'")):
        path.write_text(json.dumps(doc))
        with pytest.raises(BadInput, match=re.escape(fault)):
            read_rounds(path)
    path.write_text(json.dumps({"rounds": [{"round": 0, "clicks": 0, "accuracy_after_ft": None}]}))
    assert read_rounds(path)[0]["round"] == 0
