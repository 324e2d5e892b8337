"""Benchmark: backbone + image size -> training images/s, push and evaluate seconds (cache on/off).

Usage:
    python bench/bench.py --backbone tiny --img-size 96              # synthetic data, CPU
    python bench/bench.py --backbone resnet34 --img-size 224 --device cuda --classes 200 --per-class 30

Makes a synthetic dataset (protocli data synth) of the requested size, builds an untrained model
with the requested backbone, and measures with wall-clock timers in one process:
- train: images/s of a joint-phase training epoch through the backbone (augmentation on);
- revise epoch: one Refine-loss epoch on the cached latents (what `revise` does per epoch);
- push: seconds for N images x P prototypes on cached latents, pictures included;
- evaluate: seconds with a cold latent cache (encoder pass) and with a warm one.
Appends a row to bench/RESULTS.md with the machine and the date. Quote ratios from one run:
the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=40, help="training images per class")
    ap.add_argument("--prototypes-per-class", type=int, default=10)
    ap.add_argument("--proto-dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()

    from protocli.cache import latents
    from protocli.console import QUIET
    from protocli.data.synth import synth
    from protocli.evaluate import evaluate_model
    from protocli.model import ModelConfig, build_model
    from protocli.push import push_model
    from protocli.revise import ReviseConfig, revise_prototypes
    from protocli.run import Run
    from protocli.runtime import pick_device, seed_everything
    from protocli.train import TrainConfig, _loader, set_phase, train_epoch

    QUIET["on"] = True
    device = pick_device(args.device)
    gen = seed_everything(0)
    tmp = Path(tempfile.mkdtemp(prefix="protocli-bench-"))
    try:
        data = tmp / "data"
        # data synth draws objects whose class is an attribute combination; the bench only needs the
        # right number of images, so classes beyond the combinations are not needed here.
        synth(data, classes=args.classes, train_per_class=args.per_class, test_per_class=max(2, args.per_class // 2),
              size=args.img_size, seed=0)
        from protocli.data.cub import open_cub
        from protocli.data.transforms import train_transform

        cub = open_cub(data)
        mcfg = ModelConfig(backbone=args.backbone, num_classes=args.classes,
                           prototypes_per_class=args.prototypes_per_class, proto_dim=args.proto_dim,
                           img_size=args.img_size)
        model = build_model(mcfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        tcfg = TrainConfig(backbone=args.backbone, img_size=args.img_size, batch_size=args.batch_size,
                           workers=args.workers)
        run = Run.create(tmp / "run", data_root=data, crop=True, fingerprint=cub.fingerprint(),
                         model_cfg=mcfg.to_dict(), train_cfg={}, seed=0, device=str(device))
        n_train = len(cub.split("train"))

        loader = _loader(cub, "train", train_transform(args.img_size), tcfg, True, gen, device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        set_phase(model, "joint")
        train_epoch(model, loader, opt, tcfg.coefs(), device, amp=True, channels_last=True, desc="warm-up")
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_epoch(model, loader, opt, tcfg.coefs(), device, amp=True, channels_last=True, desc="train")
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t
        set_phase(model, "frozen")

        t = time.perf_counter()
        z, y = latents(model, cub, "train", crop=True, cache_dir=run.cache_dir, device=device)
        encode_s = time.perf_counter() - t

        # A revision epoch on the cache, by the very code of `protocli revise` (the second of two
        # epochs: the first warms up); its own record holds the epoch's seconds.
        q = z[:8, :, 0, 0].float().to(device)
        rcfg = ReviseConfig(epochs=2, batch_size=args.batch_size)
        revise_s = revise_prototypes(model, z, y, q, rcfg, gen)[-1]["seconds"]

        t = time.perf_counter()
        push_model(run, model, cub, z, y, device)
        push_s = time.perf_counter() - t
        model = run.load_model(device)

        shutil.rmtree(run.cache_dir, ignore_errors=True)
        t = time.perf_counter()
        evaluate_model(run, model, cub, device, apr=False)
        eval_cold = time.perf_counter() - t
        t = time.perf_counter()
        evaluate_model(run, model, cub, device, apr=False)
        eval_warm = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    row = {
        "date": dt.date.today().isoformat(),
        "machine": f"{torch.cuda.get_device_name() if device.type == 'cuda' else cpu_name()} "
                   f"({torch.get_num_threads()} threads)",
        "backbone": f"{args.backbone} @ {args.img_size}px",
        "N x P": f"{n_train} x {mcfg.num_prototypes}",
        "train img/s": f"{n_train / train_s:.0f}",
        "train epoch s": f"{train_s:.2f}",
        "revise epoch s (cache)": f"{revise_s:.3f}",
        "train/revise": f"{train_s / revise_s:.0f}x",
        "encode s": f"{encode_s:.2f}",
        "push s": f"{push_s:.2f}",
        "eval cold s": f"{eval_cold:.2f}",
        "eval warm s": f"{eval_warm:.2f}",
    }
    print(" | ".join(f"{k}: {v}" for k, v in row.items()))
    if not args.no_record:
        path = Path(__file__).parent / "RESULTS.md"
        if not path.exists():
            path.write_text("# Benchmark results\n\nAppended by `bench/bench.py` and `bench/demo_time.py`.\n\n")
        with open(path, "a") as fh:
            if "| date | machine | backbone" not in path.read_text():
                fh.write("\n## bench.py: training, revision epoch, push, evaluate\n\nAppended by `bench/bench.py` "
                         "(synthetic data, untrained model; timings in one process).\n\n")
                fh.write("| " + " | ".join(row) + " |\n|" + "---|" * len(row) + "\n")
            fh.write("| " + " | ".join(row.values()) + " |\n")


if __name__ == "__main__":
    main()
