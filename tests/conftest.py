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
