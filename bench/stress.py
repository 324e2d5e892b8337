"""CUB-sized stress run on CPU: counts like CUB-200-2011 -> time and peak memory of each stage.

Usage:
    OMP_NUM_THREADS=1 python bench/stress.py                 # 200 classes, 30+29 images each, 2000 prototypes
    OMP_NUM_THREADS=1 python bench/stress.py --classes 8 --train-per-class 4 --test-per-class 2 --no-record

What counts here is the number of images (5994 train + 5794 test at CUB size), prototypes (2000) and
latent cells (7x7: `tiny` at 56 px has CUB's ResNet grid at 224 px), not the pixels: the images
are small so that the run fits a shared CPU. The model is untrained (the stages' cost does not
depend on what it learned). Steps, each timed on its own, in this order on one run folder:
cache (encode train + test), push without pictures, push with pictures, evaluate (object masks cached
cold, then warm), one revision epoch on the cache, the review TUI's first screen (Textual Pilot,
headless, 120x40).

Memory: a thread samples this process's resident set (/proc/self/statm) every 5 ms; a step's peak is
the largest sample during it, "added" is that peak minus the resident set when the step began.
(tracemalloc would miss torch's tensors: they are not allocated through Python's allocator.)
Appends a section to bench/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Peak:
    """Resident-set peak over a `with` block, sampled by a background thread."""

    def __init__(self):
        self.peak = rss()
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def measure(self, name: str, rows: list, fn):
        start = rss()
        self.peak = start
        t = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t
        peak = max(self.peak, rss())
        rows.append({"step": name, "seconds": round(secs, 2), "peak RSS MB": round(peak / 2**20),
                     "added MB": round((peak - start) / 2**20)})
        print(f"{name:32s} {secs:8.2f} s   peak {peak / 2**20:7.0f} MB   added {(peak - start) / 2**20:6.0f} MB",
              flush=True)
        return out


def first_screen(run: Path) -> None:
    from protocli.review.app import ReviewApp
    from protocli.review.pictures import make_renderer
    from protocli.review.state import open_state

    async def go():
        app = ReviewApp(open_state(run), make_renderer("halfcell"))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()

    asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--test-per-class", type=int, default=29)
    ap.add_argument("--prototypes-per-class", type=int, default=10)
    ap.add_argument("--proto-dim", type=int, default=128)
    ap.add_argument("--img-size", type=int, default=56)
    ap.add_argument("--keep", type=Path, default=None, help="build the run here and keep it")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()

    import protocli.push as push_mod
    from protocli.cache import run_latents
    from protocli.console import QUIET
    from protocli.data.cub import open_cub
    from protocli.data.synth import synth
    from protocli.evaluate import evaluate_model
    from protocli.model import ModelConfig, build_model
    from protocli.push import push_model
    from protocli.revise import ReviseConfig, revise_prototypes
    from protocli.run import Run
    from protocli.runtime import seed_everything

    QUIET["on"] = True
    dev = torch.device("cpu")
    gen = seed_everything(0)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="protocli-stress-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    load0 = os.getloadavg()[0]
    peak = Peak()
    try:
        data = tmp / "data"
        if not data.exists():
            peak.measure("data synth (not a stage)", rows, lambda: synth(
                data, classes=args.classes, train_per_class=args.train_per_class,
                test_per_class=args.test_per_class, size=args.img_size, seed=0))
        cub = open_cub(data)
        mcfg = ModelConfig(backbone="tiny", num_classes=args.classes, prototypes_per_class=args.prototypes_per_class,
                           proto_dim=args.proto_dim, img_size=args.img_size)
        model = build_model(mcfg)
        shutil.rmtree(tmp / "run", ignore_errors=True)
        run = Run.create(tmp / "run", data_root=data, crop=True, fingerprint=cub.fingerprint(),
                         model_cfg=mcfg.to_dict(), train_cfg={}, seed=0, device="cpu")
        model.eval()
        ztr, ytr, zte, yte = peak.measure("cache: encode train + test", rows,
                                          lambda: run_latents(run, model, cub, dev))
        grid = tuple(ztr.shape[2:])

        real = push_mod.write_pictures
        push_mod.write_pictures = lambda *a, **k: 0
        try:
            peak.measure("push, no pictures", rows, lambda: push_model(run, model, cub, ztr, ytr, dev))
        finally:
            push_mod.write_pictures = real
        model = run.load_model(dev)
        peak.measure("push with pictures", rows, lambda: push_model(run, model, cub, ztr, ytr, dev))
        model = run.load_model(dev)
        peak.measure("evaluate (masks cold)", rows, lambda: evaluate_model(run, model, cub, dev))
        peak.measure("evaluate (warm)", rows, lambda: evaluate_model(run, model, cub, dev))
        q = ztr[: args.classes, :, 0, 0].float()  # as many antitypes as classes
        rcfg = ReviseConfig(epochs=1)
        peak.measure("revision epoch (cache)", rows, lambda: revise_prototypes(model, ztr, ytr, q, rcfg, gen))
        peak.measure("review TUI first screen", rows, lambda: first_screen(run.path))
    finally:
        peak.stop.set()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_tr, n_te = len(ytr), len(yte)
    head = (f"{dt.date.today().isoformat()}, {torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load {load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end; "
            f"{args.classes} classes, {n_tr} train + {n_te} test images at {args.img_size} px, "
            f"{mcfg.num_prototypes} prototypes, D = {args.proto_dim}, grid {grid[0]}x{grid[1]}; "
            f"process max RSS {maxrss:.0f} MB")
    print(head)
    if not args.no_record:
        path = Path(__file__).parent / "RESULTS.md"
        with open(path, "a") as fh:
            if "## stress.py" not in path.read_text():
                fh.write("\n## stress.py: CUB-sized counts on CPU\n\nAppended by `bench/stress.py` (see its "
                         "docstring): untrained `tiny`, one process; peak = resident set sampled every 5 ms.\n")
            fh.write(f"\n{head}\n\n| step | seconds | peak RSS MB | added MB |\n|---|---|---|---|\n")
            for r in rows:
                fh.write(f"| {r['step']} | {r['seconds']} | {r['peak RSS MB']} | {r['added MB']} |\n")


if __name__ == "__main__":
    main()
