"""Benchmark: push seconds on a folder of many pictures -> how much the syncs cost.

Usage (from the repository root whose code you want to time):
    OMP_NUM_THREADS=1 python bench/push_sync.py [--out DIR] [--prototypes-per-class 50] [--repeats 3]
        [--fsync-ms 0]

Builds a synthetic dataset (8 classes) and a tiny model trained for one epoch, then times
`push_run` `--repeats` times; every push writes 8 pictures per prototype (patch, image, heatmap,
5 nearest patches), 3200 files at 50 prototypes per class. Prints the seconds of each push and
the number of fsync calls it made. Run it once on the code before a change and once after.
`--fsync-ms` adds that much latency to every fsync, as a network file system's commit round trip
would (a local SSD syncs in microseconds, so the difference hardly shows there).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # time this checkout, not an installed one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--prototypes-per-class", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fsync-ms", type=float, default=0.0)
    args = ap.parse_args()
    from protocli.console import QUIET
    from protocli.data.synth import synth
    from protocli.push import push_run
    from protocli.recipes import TINY
    from protocli.train import TrainConfig, train_run

    QUIET["on"] = True
    out = args.out or Path(tempfile.mkdtemp(prefix="push_sync_"))
    synth(out / "data", classes=8, train_per_class=20, test_per_class=2, size=32, confound=0.8, seed=0)
    cfg = TrainConfig(**{**TINY, "backbone": "tiny", "recipe": "tiny", "img_size": 32,
                         "prototypes_per_class": args.prototypes_per_class, "proto_dim": 16, "warm_epochs": 1,
                         "joint_epochs": 0, "last_epochs": 0, "batch_size": 32, "workers": 0, "seed": 0,
                         "augment": False, "stop_after": "joint"})
    train_run(out / "data", out / "run", cfg, device=torch.device("cpu"))
    push_run(out / "run", torch.device("cpu"))  # warms the latent cache

    count = [0]
    real = os.fsync

    def fsync(fd):
        count[0] += 1
        time.sleep(args.fsync_ms / 1000)
        return real(fd)

    os.fsync = fsync
    import protocli.run as runmod

    tree = getattr(runmod, "sync_tree", None)  # the one sync of a stage commit, where there is one
    spent = [0.0]

    def timed_tree(folder):
        t = time.perf_counter()
        tree(folder)
        spent[0] += time.perf_counter() - t

    if tree is not None:
        runmod.sync_tree = timed_tree
    for _ in range(args.repeats):
        count[0], spent[0] = 0, 0.0
        t0 = time.perf_counter()
        push_run(out / "run", torch.device("cpu"))
        secs = time.perf_counter() - t0
        files = sum(1 for _ in sorted((out / "run" / "stages").iterdir())[-1].rglob("*.png"))
        print(f"push: {secs:.2f} s, {files} pictures, {count[0]} fsync calls"
              + (f", stage sync {spent[0]:.3f} s" if tree is not None else ""), flush=True)


if __name__ == "__main__":
    main()
