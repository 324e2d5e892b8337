"""Shared fixtures: a tiny synthetic dataset and a tiny trained run (session-scoped, built once)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from protocli.console import QUIET
from protocli.recipes import TINY

QUIET["on"] = True  # no progress bars in test output
torch.set_num_threads(2)

# The `tiny` recipe (as `protocli train --backbone tiny`), shrunk. No augmentation: with 40 images and
# a few epochs it only slows learning down.
TINY_TRAIN = {**TINY, "backbone": "tiny", "recipe": "tiny", "img_size": 32, "prototypes_per_class": 2,
              "proto_dim": 16, "warm_epochs": 1, "joint_epochs": 5, "last_epochs": 5, "batch_size": 16,
              "workers": 0, "seed": 0, "augment": False}


@pytest.fixture(scope="session")
def tiny_train_cfg() -> dict:
    return dict(TINY_TRAIN)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from protocli.data.synth import synth

    out = tmp_path_factory.mktemp("data") / "synth"
    synth(out, classes=4, train_per_class=10, test_per_class=4, size=32, confound=0.8, seed=0)
    return out


@pytest.fixture(scope="session")
def _tiny_run_master(tiny_data, tmp_path_factory) -> Path:
    from protocli.train import TrainConfig, train_run

    run = tmp_path_factory.mktemp("runs") / "base"
    train_run(tiny_data, run, TrainConfig(**TINY_TRAIN), device=torch.device("cpu"))
    return run


@pytest.fixture
def tiny_run(_tiny_run_master, tmp_path) -> Path:
    """A fresh copy of a trained tiny run (train, push, last stages) that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(_tiny_run_master, dst)
    return dst


# -- decisions written directly, so that a test does not depend on which prototypes the tiny run's
# -- simulated user happens to call non-object (that depends on training and on float reduction order).

def lone(run_dir: Path) -> list[int]:
    """Prototypes of the run's latest push whose pushed vector no other prototype shares (so a reject
    of one puts into Q no vector that an accepted prototype also holds)."""
    from protocli.model import pushed_prototypes as pushed_vectors
    from protocli.run import Run

    v = pushed_vectors(Run.open(run_dir).require_push()).double()
    d = torch.cdist(v, v) + torch.diag(torch.full((len(v),), float("inf"), dtype=v.dtype))
    return [j for j in range(len(v)) if float(d[j].min()) > 0]


def reject(run_dir: Path, prototypes: list[int], by: str = "user") -> str:
    """Decide the latest push of a run as `simulate` does, but with the verdicts given: reject
    `prototypes` (their pushed vectors join Q) and accept the others. Returns the push id."""
    from protocli import antitypes as atmod
    from protocli.model import pushed_prototypes as pushed_vectors
    from protocli.run import Run
    from protocli.runfiles import read_push_doc

    run = Run.open(run_dir)
    push_dir = run.require_push()
    doc = read_push_doc(push_dir)
    vectors = pushed_vectors(push_dir)
    ants = atmod.load(run.antitypes_path, num_prototypes=len(vectors), dim=vectors.shape[1],
                      known_pushes=run.pushes())
    push = doc["push"]
    for p in doc["prototypes"]:
        j = p["prototype"]
        if j in prototypes:
            ants.decide(j, "reject", by, push, vector=vectors[j].numpy(), cls=p["class"], image=p["image"],
                        box=p["box"])
        else:
            ants.decide(j, "accept", by, push)
    atmod.save(ants, run.antitypes_path)
    assert atmod.load(run.antitypes_path).rejected(push) == sorted(prototypes)
    return push


@pytest.fixture
def decide():
    """The helpers above, for tests: decide.lone(run_dir), decide.reject(run_dir, prototypes)."""
    import types

    return types.SimpleNamespace(lone=lone, reject=reject)
