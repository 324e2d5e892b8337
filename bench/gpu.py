"""The GPU check behind bench/gpu.sh: one run on a GPU machine -> one table (under 8 minutes on one GPU).

Steps (each timed on its own; CUDA synchronised around every timer):
  data       synthetic CUB-sized dataset (200 classes, 30 train + 29 test images each, 64 px files:
             the loader resizes them to 224 px, so decoding is cheaper than CUB's JPEGs)
  train      training images/s of ResNet34 at 224 px (joint phase, batch 80, the real `train_epoch`
             step on an in-memory batch, so the loader is not measured): fp32 (cuDNN may use TF32,
             torch's default), then autocast (bf16) + channels_last
  cache      `cache.latents` of train + test at 224 px (the real loader, 8 workers at most)
  push       `push_model` on the cache: 5994 images x 2000 prototypes, 7x7 grid; without pictures,
             then with (16000 PNGs)
  revise     one revision epoch (`revise_prototypes`) on the cache, after one warm-up epoch
  launcher   `protocli train ... --joint-epochs 1` on the 200-class data as a plain run, then under
             `torchrun --nproc-per-node 1` (the same code path: world size 1); and with one process per
             GPU when there are several
--dry-run: every step on CPU at toy size (4 classes, 32 px, a few steps), to check that each starts.
The machine's GPU, torch and CUDA versions head the table. The model is untrained throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Batches:
    """The same on-device batch `steps` times, shaped like a DataLoader for `train_epoch`."""

    def __init__(self, x, y, steps: int):
        self.x, self.y, self.steps = x, y, steps
        self.sampler = self.dataset = range(steps * len(y))

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y, None


def train_speed(device, size: int, batch: int, steps: int, amp: bool, backbone: str, classes: int) -> float:
    from protocli.model import ModelConfig, build_model
    from protocli.train import TrainConfig, make_optimizers, set_phase, train_epoch

    model = build_model(ModelConfig(backbone=backbone, num_classes=classes, prototypes_per_class=10,
                                    proto_dim=128, img_size=size)).to(device)
    if amp and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(backbone=backbone, img_size=size, batch_size=batch)
    _, joint, _ = make_optimizers(model, cfg)
    set_phase(model, "joint")
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    kw = dict(amp=amp, channels_last=amp, desc="train")
    train_epoch(model, Batches(x, y, 3), joint, cfg.coefs(), device, **kw)  # warm-up (cudnn autotune)
    sync(device)
    t = time.perf_counter()
    train_epoch(model, Batches(x, y, steps), joint, cfg.coefs(), device, **kw)
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def timed(rows: list, name: str, fn, device, unit: str = "s"):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    secs = time.perf_counter() - t
    rows.append((name, f"{secs:.2f} s"))
    print(f"  {name}: {secs:.2f} s", flush=True)
    return out


def cli_seconds(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every step on CPU at toy size")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    dry = args.dry_run

    import protocli.push as push_mod
    from protocli.cache import run_latents
    from protocli.console import QUIET
    from protocli.data.cub import open_cub
    from protocli.data.synth import synth
    from protocli.model import ModelConfig, build_model
    from protocli.push import push_model
    from protocli.revise import ReviseConfig, revise_prototypes
    from protocli.run import Run
    from protocli.runtime import seed_everything

    QUIET["on"] = True
    if dry:
        device, size, classes, tr, te, backbone, batch, steps = torch.device("cpu"), 32, 4, 4, 2, "resnet34", 4, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run `bench/gpu.sh --dry-run` to check the steps on CPU")
        device, size, classes, tr, te, backbone, batch, steps = torch.device("cuda"), 224, 200, 30, 29, "resnet34", 80, 40
        torch.backends.cudnn.benchmark = True
    work = args.work or Path(tempfile.mkdtemp(prefix="protocli-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(0)
    rows: list[tuple[str, str]] = []
    t_all = time.perf_counter()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)",
          flush=True)
    try:
        data = work / "data"
        if not data.exists():
            timed(rows, "data synth", lambda: synth(data, classes=classes, train_per_class=tr, test_per_class=te,
                                                    size=min(64, size), seed=0), device)
        cub = open_cub(data)

        for amp in (False, True):
            ips = train_speed(device, size, batch, steps, amp, backbone, classes)
            label = "autocast + channels_last" if amp else "fp32"
            rows.append((f"train {backbone} @ {size}px, {label}", f"{ips:.0f} img/s"))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)

        mcfg = ModelConfig(backbone=backbone, num_classes=classes, prototypes_per_class=10, proto_dim=128,
                           img_size=size)
        model = build_model(mcfg).to(device).eval()
        shutil.rmtree(work / "run", ignore_errors=True)
        run = Run.create(work / "run", data_root=data, crop=True, fingerprint=cub.fingerprint(),
                         model_cfg=mcfg.to_dict(), train_cfg={}, seed=0, device=str(device))
        ztr, ytr, zte, yte = timed(rows, f"cache: encode {len(cub.split('train'))} + {len(cub.split('test'))} images",
                                   lambda: run_latents(run, model, cub, device), device)
        real = push_mod.write_pictures
        push_mod.write_pictures = lambda *a, **k: 0
        try:
            timed(rows, f"push {len(ytr)} x {mcfg.num_prototypes}, no pictures",
                  lambda: push_model(run, model, cub, ztr, ytr, device), device)
        finally:
            push_mod.write_pictures = real
        timed(rows, "push with pictures", lambda: push_model(run, model, cub, ztr, ytr, device), device)
        model = run.load_model(device)
        q = ztr[:classes, :, 0, 0].float().to(device)
        hist = revise_prototypes(model, ztr, ytr, q, ReviseConfig(epochs=2), gen)
        rows.append(("revision epoch (cache)", f"{hist[-1]['seconds']:.2f} s"))
        print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)

        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        train = ["train", str(data), "--backbone", backbone, "--img-size", str(size), "--warm-epochs", "0",
                 "--joint-epochs", "1", "--stop-after", "joint", "--batch-size", str(batch), "-q",
                 "--device", str(device.type)]
        if dry:
            train += ["--workers", "0", "--prototypes-per-class", "1"]
        py = [sys.executable]
        tr_ = ["-m", "torch.distributed.run", "--standalone"]
        plain = cli_seconds(py + ["-m", "protocli"] + train + [str(work / "plain")], env)
        one = cli_seconds(py + tr_ + ["--nproc-per-node", "1", "-m", "protocli"] + train
                          + [str(work / "torchrun1")], env)
        rows.append(("protocli train, 1 joint epoch: plain", f"{plain:.1f} s"))
        rows.append(("  same under torchrun --nproc-per-node 1", f"{one:.1f} s ({one - plain:+.1f} s)"))
        n = torch.cuda.device_count() if device.type == "cuda" else 0
        if n > 1:  # --batch-size is the global batch: it must split evenly over the processes
            many_train = train[:train.index("--batch-size") + 1] + [str(batch - batch % n)] + \
                train[train.index("--batch-size") + 2:]
            many = cli_seconds(py + tr_ + [f"--nproc-per-node={n}", "-m", "protocli"] + many_train
                               + [str(work / f"torchrun{n}")], env)
            rows.append((f"  same under torchrun --nproc-per-node {n}", f"{many:.1f} s"))
        for r in rows[-2:]:
            print(f"  {r[0]}: {r[1]}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    rows.append(("total wall time", f"{time.perf_counter() - t_all:.0f} s"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{name} (torch {torch.__version__})\n" + "\n".join(f"{a:<{width}}  {b}" for a, b in rows))
    print(json.dumps(dict(rows)))


if __name__ == "__main__":
    main()
