"""The two-process job of tests/test_distributed.py, started with torchrun (gloo, CPU).

argv: OUT DATA BASE_RUN PUSH_RUN. Every rank saves what it computed as OUT/rank{R}.pt, so the test
can check that all ranks hold the same result and that it equals one process's. Small batch sizes
make both ranks do real work on the tiny data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import protocli.train as T
from protocli import distributed
from protocli.cache import latents, masks
from protocli.console import QUIET
from protocli.evaluate import activation_precision, evaluate_run
from protocli.nearest import nearest_patches
from protocli.push import push_run
from protocli.run import Run
from protocli.train import TrainConfig, train_run

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_TRAIN  # noqa: E402


def main(out: Path, data: Path, base: Path, push_dir: Path) -> None:
    torch.set_num_threads(1)
    dist, dev = distributed.setup("cpu")
    QUIET["on"] = True
    res: dict = {}
    run = Run.open(base)
    cub, model = run.cub(), run.load_model(dev)
    z, y = latents(model, cub, "train", crop=run.crop, cache_dir=None, device=dev, batch_size=8, dist=dist)
    res["latents"] = (z, y)
    res["nearest"] = nearest_patches(model, z, y, dev, batch_size=8, dist=dist)
    zte, yte = latents(model, cub, "test", crop=run.crop, cache_dir=None, device=dev, batch_size=8, dist=dist)
    mte = masks(cub, "test", size=model.cfg.img_size, crop=run.crop, cache_dir=None)
    res["apr"] = activation_precision(model, zte, yte, mte, dev, batch_size=4, dist=dist)
    res["push"] = push_run(push_dir, dev, dist=dist)
    res["evaluate"] = evaluate_run(push_dir, device=dev, dist=dist)

    # Training: 1 warm + 1 joint epoch with DDP, then cache, push and last layer (an ordinary run).
    cfg = TrainConfig(**{**TINY_TRAIN, "joint_epochs": 2, "last_epochs": 1})
    res["train"] = train_run(data, out / "trained", cfg, device=dev, dist=dist)
    # --resume: killed during the third epoch on every rank, then resumed; must equal the run above.
    real, calls = T.train_epoch, {"n": 0}

    def dying_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    T.train_epoch = dying_epoch
    try:
        train_run(data, out / "cut", cfg, device=dev, dist=dist)
    except KeyboardInterrupt:
        pass
    T.train_epoch = real
    train_run(data, out / "cut", cfg, device=dev, resume=True, dist=dist)
    torch.save(res, out / f"rank{dist.rank}.pt")
    distributed.finish()


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:5]))
