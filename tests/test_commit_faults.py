"""A stage commit killed at every step leaves the run exactly as before or exactly as after.

A child process builds a push stage and is killed (os._exit, no clean-up) at the k-th file-system
step of the commit: the sync, the folder rename, each write, sync and rename of the manifest and of
RUN/model.safetensors. k runs from 1 until the child finishes. After each kill the run must open,
list the old stages or the old ones plus the new one, give the matching weights, and agree with
every other way of listing pushes; the next writer removes whatever the killed one left.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from protocli.model import ModelConfig, build_model
from protocli.review.state import list_pushes
from protocli.run import Run, save_weights

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, shutil, sys
from pathlib import Path
import protocli.run as runmod

run_dir, k, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = [0]

def trap(fn):
    def wrapped(*a, **kw):
        count[0] += 1
        if count[0] == k:
            os._exit(137)  # killed: no finally, no clean-up
        return fn(*a, **kw)
    return wrapped

run = runmod.Run.open(run_dir)
with run.stage("push") as st:
    (st.dir / "patches").mkdir()
    for j in range(5):
        runmod.atomic_write_bytes(st.dir / "patches" / f"{j:04d}.png", b"png" * 10)
    runmod.atomic_write_bytes(st.dir / "prototypes.json", b"{}")
    shutil.copyfile(weights, st.dir / "model.safetensors")
    st.saved_model = True
    # From here on, every step of the commit is a place to die.
    for name in ("replace", "rename", "link", "fsync", "unlink"):
        setattr(os, name, trap(getattr(os, name)))
    runmod.sync_tree = trap(runmod.sync_tree)
print("steps", count[0])
"""


def tiny_model(seed: int):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="tiny", num_classes=2, prototypes_per_class=2, proto_dim=8, img_size=32)
    return build_model(cfg)


def make_run(path: Path) -> tuple[Run, bytes, Path]:
    model = tiny_model(0)
    run = Run.create(path, data_root=path.parent, crop=True, fingerprint="f", model_cfg=model.cfg.to_dict(),
                     train_cfg={}, seed=0, device="cpu")
    with run.stage("train") as st:
        st.save_model(model)
    new = path.parent / f"{path.name}-new.safetensors"
    save_weights(tiny_model(1), new)
    return run, (path / "model.safetensors").read_bytes(), new


def leftovers(run_dir: Path) -> list[str]:
    listed = {s["id"] for s in Run.open(run_dir).manifest["stages"]}
    extra = [p.name for p in (run_dir / "stages").iterdir() if p.name not in listed]
    return extra + [p.name for p in run_dir.glob(".*.tmp")]


def test_kill_at_every_commit_step_leaves_before_or_after(tmp_path):
    outcomes = []
    for k in range(1, 40):
        run, old_bytes, new = make_run(tmp_path / f"run{k}")
        before = [s["id"] for s in run.manifest["stages"]]
        child = subprocess.run([sys.executable, "-c", CHILD, str(run.path), str(k), str(new)], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert child.returncode in (0, 137), child.stderr
        again = Run.open(run.path)  # the manifest is always whole
        ids = [s["id"] for s in again.manifest["stages"]]
        state = "before" if ids == before else "after"
        assert ids in (before, [*before, "002-push"]), (k, ids)
        want = old_bytes if state == "before" else new.read_bytes()
        assert again.weights_path.read_bytes() == want, (k, state)
        assert again.pushes() == list_pushes(run.path) == ([] if state == "before" else ["002-push"])
        # The next writer cleans up after the dead one; RUN/model.safetensors follows the manifest.
        with again.stage("mask"):
            pass
        assert leftovers(run.path) == [], k
        assert (run.path / "model.safetensors").read_bytes() == want
        outcomes.append(state)
        if child.returncode == 0:
            break
    assert child.returncode == 0, "the child should finish once k passes the last step"
    steps = int(child.stdout.split()[-1])
    assert len(outcomes) == steps + 1 >= 6  # sync, rename, manifest (write, sync, rename, sync), link...
    assert "before" in outcomes and "after" in outcomes
    # The commit point is the manifest's rename: every kill before it is "before", every one after "after".
    flip = outcomes.index("after")
    assert outcomes[:flip] == ["before"] * flip and outcomes[flip:] == ["after"] * (len(outcomes) - flip)


def test_folder_without_manifest_entry_is_not_a_stage(tmp_path):
    run, _, _ = make_run(tmp_path / "run")
    (run.path / "stages" / "002-push").mkdir()  # e.g. a writer killed between rename and manifest
    (run.path / "stages" / ".003-push.tmp").mkdir()
    again = Run.open(run.path)
    assert again.pushes() == [] and list_pushes(run.path) == [] and again.latest_push() is None
    assert again.next_stage_id("push") == "002-push"
    with again.stage("push"):
        pass
    assert sorted(p.name for p in (run.path / "stages").iterdir()) == ["001-train", "002-push"]
