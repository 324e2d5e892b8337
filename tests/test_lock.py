"""The run lock: one writer at a time, a clear exit 2 naming the holder, --wait, dead holders, readers free.

Other processes are small Python children that import protocli.run or protocli.lock only (no torch),
so each costs a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocli import lock
from protocli.cli import app
from protocli.run import Run

ROOT = Path(__file__).resolve().parent.parent

HOLDER = r"""
import sys, time
from protocli import lock
lock.acquire(sys.argv[1], "protocli revise " + sys.argv[1])
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""

# What a writing command does (protocli.cli.common.execute): take the lock, open the run, work, commit.
WRITER = r"""
import sys, time
from pathlib import Path
import typer
from protocli.cli.common import execute
from protocli.run import Run

run_dir, kind, go, wait = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "wait"
while not go.exists():  # start together
    time.sleep(0.002)

def work():
    run = Run.open(run_dir)
    time.sleep(0.3)  # reading the run and computing, as revise or mask would
    with run.stage(kind) as st:
        (st.dir / "result.txt").write_text(kind)
    return {"stage": run.manifest["stages"][-1]["id"]}

try:
    execute(work, as_json=True, quiet=True, lock=Path(run_dir), wait=wait)
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


def fake_run(path: Path) -> Run:
    return Run.create(path, data_root=path.parent, crop=True, fingerprint="f", model_cfg={"backbone": "tiny"},
                      train_cfg={}, seed=0, device="cpu")


def start_holder(run: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_second_writer_gets_exit_2_naming_the_holder(tmp_path):
    run = fake_run(tmp_path / "run")
    holder = start_holder(run.path, 30)
    try:
        with pytest.raises(lock.Busy, match=rf"pid {holder.pid} \(protocli revise .*run\)"):
            with run.stage("mask"):
                pass
        res = CliRunner().invoke(app, ["simulate", str(run.path)])
        assert res.exit_code == 2
        line = res.output.strip()
        assert len(line.splitlines()) == 1 and f"in use by pid {holder.pid}" in line and "--wait" in line
        assert Run.open(run.path).stage_log() == []  # nothing was written
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = fake_run(tmp_path / "run")
    holder = start_holder(run.path, 30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock.holder(run.path)["pid"] == holder.pid  # its note is still there...
    with run.stage("mask"):  # ...but the kernel released its lock when it died
        assert lock.holder(run.path)["pid"] == os.getpid()
    assert [s["id"] for s in Run.open(run.path).stage_log()] == ["001-mask"]


def test_wait_blocks_until_the_holder_exits(tmp_path):
    run = fake_run(tmp_path / "run")
    holder = start_holder(run.path, 0.8)
    t0 = time.perf_counter()
    with lock.hold(run.path, "test", wait=True):
        waited = time.perf_counter() - t0
    holder.wait()
    assert waited > 0.3


def test_readers_need_no_lock(tmp_path):
    run = fake_run(tmp_path / "run")
    with run.stage("train"):
        pass
    holder = start_holder(run.path, 30)
    try:
        assert Run.open(run.path).stage_log()[0]["id"] == "001-train"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("wait", [False, True])
def test_two_writers_started_together(tmp_path, wait):
    run = fake_run(tmp_path / "run")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run.path), kind, str(go),
                               "wait" if wait else "fail"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for kind in ("revise", "mask")]
    time.sleep(0.5)  # both started and polling
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    stages = Run.open(run.path).stage_log()
    folders = sorted(p.name for p in (run.path / "stages").iterdir())
    assert folders == [s["id"] for s in stages]  # every folder listed, none twice
    if wait:
        assert codes == [0, 0], outs
        assert [s["id"][:3] for s in stages] == ["001", "002"]
        assert sorted(json.loads(o)["stage"] for o, _ in outs) == [s["id"] for s in stages]
    else:
        assert codes == [0, 2], outs
        assert len(stages) == 1
        loser = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 2)
        assert "in use by pid" in loser and len(loser.strip().splitlines()) == 1
