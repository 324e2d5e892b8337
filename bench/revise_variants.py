"""Compare revision variants on the synthetic confounded data -> a markdown table (and JSON) of rounds.

Usage (what docs/revision.md reports):

    python bench/revise_variants.py --out /tmp/rev [--variants all] [--rounds 5] [--speed]
    # the paper's regime: a baseline fine-tuned from a pretrained encoder (docs/paper-regime.md)
    python bench/revise_variants.py --out /tmp/rev-pre --train-args "--backbone tiny --weights encoder.safetensors"

Steps: make the default synthetic data (`protocli data synth`) and train a tiny baseline unless
OUT/data and OUT/base exist; fork the baseline once per variant and run Alg. 1 (`rounds_run`,
the very code of `protocli rounds`) with the simulated user; fork it once more for the masking
condition. Each variant row: non-object count (box criterion) after each round, the round at
which it reaches <= 2% of all prototypes and stays there, test/train accuracy after the last round, count
with overlap >= .75, clicks, seconds. `--speed` also times a revision epoch on the latent cache
against a joint training epoch through the backbone on the same images, in the same process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

# Use the checkout this script lives in, whatever `protocli` the environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The authors' code (l2, max, prototypes Adam 1e-3, no Clst/Sep), spelled out so that a change of the
# ReviseConfig defaults does not change what a variant name means.
AUTHORS = {
    "refine_distance": "l2",
    "refine_reduce": "max",
    "lr_prototypes": 1e-3,
    "lr_kept": None,
    "lam_clst": 0.0,
    "lam_sep": 0.0,
    # the original push: every own-class patch, duplicates allowed, boxes from the map before projection
    "push_avoid": False,
    "push_distinct": False,
    "box_map": "before",
}
# protocli's revision push since docs/paper-regime.md: antitype avoidance, distinct patches, boxes of
# the pushed vectors, accepted prototypes kept in place.
CONVERGE = {"push_avoid": True, "push_distinct": True, "box_map": "after", "lr_kept": 0.0}
CLST_SEP = {"lam_clst": 0.8, "lam_sep": 0.08}
SQ_MEAN = {"refine_distance": "squared", "refine_reduce": "mean"}


def _v(epochs: int = 30, **changes) -> tuple[dict, int]:
    return {**AUTHORS, **changes}, epochs


# name -> (ReviseConfig fields, epochs per round)
VARIANTS: dict[str, tuple[dict, int]] = {
    "authors": _v(),
    "squared": _v(refine_distance="squared"),
    "mean": _v(refine_reduce="mean"),
    "authors-clst-sep": _v(**CLST_SEP),
    "authors-100ep": _v(100),
    "authors-lr1e-2": _v(lr_prototypes=1e-2),
    "mean-lr1e-2": _v(refine_reduce="mean", lr_prototypes=1e-2),
    "squared-mean-lr1e-2": _v(**SQ_MEAN, lr_prototypes=1e-2),
    "mean-lr3e-2": _v(refine_reduce="mean", lr_prototypes=3e-2),
    "mean-lr3e-2-clst-sep": _v(refine_reduce="mean", lr_prototypes=3e-2, **CLST_SEP),
    "squared-mean-lr3e-2": _v(**SQ_MEAN, lr_prototypes=3e-2),  # the chosen defaults
    "squared-mean-lr3e-2-clst-sep": _v(**SQ_MEAN, lr_prototypes=3e-2, **CLST_SEP),
    "squared-mean-lr3e-2-10ep": _v(10, **SQ_MEAN, lr_prototypes=3e-2),
    "squared-mean-lr3e-2-100ep": _v(100, **SQ_MEAN, lr_prototypes=3e-2),
    # only the rejected prototypes (those on an antitype) take the large step; the others the authors' 1e-3
    "mean-lr3e-2-kept1e-3": _v(refine_reduce="mean", lr_prototypes=3e-2, lr_kept=1e-3),
    "squared-mean-lr3e-2-kept1e-3": _v(**SQ_MEAN, lr_prototypes=3e-2, lr_kept=1e-3),
    "squared-mean-lr1e-1-kept1e-3": _v(**SQ_MEAN, lr_prototypes=1e-1, lr_kept=1e-3),
    "squared-mean-lr3e-2-kept1e-2": _v(**SQ_MEAN, lr_prototypes=3e-2, lr_kept=1e-2),
    "defaults": _v(**SQ_MEAN, lr_prototypes=3e-2, **CONVERGE),  # the current ReviseConfig defaults
}
# The baseline is `protocli train DATA --backbone tiny`: the tiny recipe (protocli/recipes.py).
BASELINE = ["--backbone", "tiny", "--device", "cpu"]


def protocli(*args: str) -> None:
    from typer.testing import CliRunner

    from protocli.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exit_code != 0:
        sys.exit(f"protocli {' '.join(args)} failed ({res.exit_code}): {res.output[-2000:]}")


def prepare(out: Path, train_args: list[str], data_args: list[str]) -> tuple[Path, Path]:
    data, base = out / "data", out / "base"
    if not (data / "images.txt").exists():
        protocli("data", "synth", str(data), "--quiet", *data_args)
    if not (base / "manifest.json").exists() or not any(
        s["kind"] == "last" for s in json.loads((base / "manifest.json").read_text())["stages"]
    ):
        shutil.rmtree(base, ignore_errors=True)
        protocli("train", str(data), str(base), "--quiet", *train_args)
    return data, base


def run_variant(
    base: Path, dest: Path, kw: dict, epochs: int, rounds: int, criterion: str, seed: int
) -> dict:
    from protocli.revise import ReviseConfig
    from protocli.rounds import rounds_run

    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    res = rounds_run(
        base,
        n_rounds=rounds,
        user="simulated",
        epochs=epochs,
        criterion=criterion,
        out=dest,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        cfg=ReviseConfig(**kw),
    )
    rows = res["rounds"]
    P = res["summary"]["prototypes"]
    after = [r["non_object_after"] for r in rows]
    ok = [v is not None and v <= 0.02 * P for v in after]
    # the first round from which the count stays at or below 2% through the last round
    reach = next((rows[i]["round"] for i in range(len(ok)) if all(ok[i:])), None)
    last = rows[-1]
    return {
        "non_object": after,
        "reach_2pct": reach,
        "accuracy": last["accuracy_after_ft"],
        "train_accuracy": last["train_accuracy"],
        "overlap_ge_75": last["overlap_ge_75"],
        "clicks": res["summary"]["clicks"],
        "unique": last["unique"],
        "antitypes": res["summary"]["antitypes"],
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }


def run_masking(base: Path, dest: Path, criterion: str, seed: int) -> dict:
    from protocli.mask import mask_run
    from protocli.run import Run
    from protocli.simulate import simulate

    shutil.rmtree(dest, ignore_errors=True)
    run = Run.open(base).fork(dest)
    sim = simulate(run, criterion=criterion)
    m = mask_run(dest, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))
    return {
        "masked": m["masked"],
        "non_object_before": sim["rejected"],
        "accuracy_before": m["accuracy_before"],
        "accuracy_masked": m["accuracy_masked"],
        "accuracy": m["accuracy_after"],
        "train_accuracy": m["train_accuracy_after"],
        "overlap_ge_75": sim["overlap_ge_75"],
    }


def speed(
    base: Path, backbones: tuple[str, ...] = ("tiny",), epochs: int = 10, threads: tuple[int, ...] = (1, 2)
) -> list[dict]:
    """Seconds per revision epoch (cached latents) vs per joint epoch through the backbone, same images.

    Both at the same torch thread count, fastest of several epochs (the machine may be shared; on a
    busy 2-core machine one thread is often faster for the small matmuls of a revision epoch). The
    baseline's own backbone uses its trained weights; any other backbone is built with random
    weights and the baseline's model config (timing does not depend on the weights).
    """
    from torch.utils.data import DataLoader

    from protocli.cache import latents
    from protocli.data.cub import ImageSet
    from protocli.data.transforms import train_transform
    from protocli.model import ModelConfig, build_model
    from protocli.revise import ReviseConfig, revise_prototypes
    from protocli.run import Run
    from protocli.train import TrainConfig, make_optimizers, set_phase, train_epoch

    run = Run.open(base)
    dev = torch.device("cpu")
    cub = run.cub()
    tcfg = TrainConfig(**run.manifest["train"])
    loader = DataLoader(
        ImageSet(cub, "train", train_transform(tcfg.img_size), crop=run.crop),
        batch_size=tcfg.batch_size,
        shuffle=True,
        num_workers=0,
    )
    rows = []
    before = torch.get_num_threads()
    for name in backbones:
        own = name == run.manifest["model"]["backbone"]

        def fresh(name=name, own=own):
            if own:
                return run.load_model(dev)
            return build_model(ModelConfig.from_dict({**run.manifest["model"], "backbone": name}), seed=0)

        cache = run.cache_dir if own else None
        z, y = latents(fresh(), cub, "train", crop=run.crop, cache_dir=cache, device=dev, workers=0)
        for th in threads:
            torch.set_num_threads(th)
            model = fresh()
            q = model.prototypes.detach()[:10].clone()
            cfg = ReviseConfig(
                epochs=epochs + 1
            )  # revise's own default batch size, as `protocli revise` runs
            hist = revise_prototypes(model, z, y, q, cfg, torch.Generator().manual_seed(0))
            rev = min(h["seconds"] for h in hist[1:])  # the first epoch is warm-up
            model = fresh()
            _, joint, _ = make_optimizers(model, tcfg)
            set_phase(model, "joint")
            times = []
            for _ in range(3 if own else 2):
                t0 = time.perf_counter()
                train_epoch(
                    model, loader, joint, tcfg.coefs(), dev, amp=False, channels_last=False, desc="joint"
                )
                times.append(time.perf_counter() - t0)
            bb = min(times)
            rows.append(
                {
                    "backbone": name,
                    "grid": list(z.shape[2:]),
                    "threads": th,
                    "images": len(y),
                    "batch_size": tcfg.batch_size,
                    "revise_batch_size": cfg.batch_size,
                    "revise_epoch_s": round(rev, 4),
                    "backbone_epoch_s": round(bb, 3),
                    "ratio": round(bb / rev, 1),
                }
            )
    torch.set_num_threads(before)
    return rows


def table(results: dict, baseline: dict, masking: dict | None, P: int) -> str:
    lines = [
        "| variant | epochs/round | non-object after rounds 0..N | <=2% from round | test acc | train acc "
        "| overlap>=.75 | unique patches | clicks | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| baseline | - | {baseline['non_object']} | - | {baseline['accuracy']:.3f} | "
        f"{baseline['train_accuracy']:.3f} | {baseline['overlap_ge_75']} | {baseline['unique']} | - | - |",
    ]
    if masking:
        lines.append(
            f"| masking | - | {masking['non_object_before']} -> 0 (masked) | - | {masking['accuracy']:.3f} | "
            f"{masking['train_accuracy']:.3f} | {masking['overlap_ge_75']} | {baseline['unique']} | "
            f"{masking['non_object_before']} | - |"
        )
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['epochs']} | {' '.join(str(v) for v in r['non_object'])} | "
            f"{r['reach_2pct'] if r['reach_2pct'] is not None else 'never'} | {r['accuracy']:.3f} | "
            f"{r['train_accuracy']:.3f} | {r['overlap_ge_75']} | {r['unique']} | {r['clicks']} | {r['seconds']} |"
        )
    return "\n".join(lines) + f"\n\n{P} prototypes; 2% = {0.02 * P:g}.\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="Work folder (data, base, runs, results).")
    ap.add_argument(
        "--variants", default="all", help="Comma-separated names, all, or none: " + ", ".join(VARIANTS)
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--criterion", default="box", choices=("box", "cell"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed", action="store_true", help="Also time revise vs backbone epochs.")
    ap.add_argument(
        "--speed-backbones",
        default="tiny,resnet18@layer3",
        help="Backbones to time with --speed (the baseline's own, then random-weight others).",
    )
    ap.add_argument("--no-masking", action="store_true")
    ap.add_argument(
        "--train-args", default=" ".join(BASELINE), help="Arguments of `protocli train` for the baseline."
    )
    ap.add_argument(
        "--data-args", default="", help="Arguments of `protocli data synth` (default: none, the defaults)."
    )
    a = ap.parse_args(argv)

    from protocli.console import QUIET
    from protocli.evaluate import evaluate_run
    from protocli.run import Run

    QUIET["on"] = True
    a.out.mkdir(parents=True, exist_ok=True)
    _, base = prepare(a.out, a.train_args.split(), a.data_args.split())
    ev = evaluate_run(base, criterion=a.criterion, apr=False)
    baseline = {
        "unique": Run.open(base).stage_log("push")[-1].get("unique"),
        "non_object": ev["non_object"],
        "accuracy": ev["accuracy"],
        "train_accuracy": ev["train_accuracy"],
        "overlap_ge_75": ev["overlap_ge_75"],
    }
    names = list(VARIANTS) if a.variants == "all" else [] if a.variants == "none" else a.variants.split(",")
    results: dict = {}
    masking = None if a.no_masking else run_masking(base, a.out / "runs" / "masking", a.criterion, a.seed)
    for name in names:
        kw, epochs = VARIANTS[name]
        dest = a.out / "runs" / (name if a.seed == 0 else f"{name}-seed{a.seed}")
        r = run_variant(base, dest, kw, epochs, a.rounds, a.criterion, a.seed)
        r["epochs"], r["config"] = epochs, kw
        results[name] = r
        print(
            f"{name}: non-object {r['non_object']} acc {r['accuracy']:.3f} ({r['seconds']} s)",
            file=sys.stderr,
        )
    doc = {
        "command": " ".join(sys.argv),
        "train_args": a.train_args,
        "data_args": a.data_args,
        "baseline": baseline,
        "masking": masking,
        "variants": results,
        "threads": torch.get_num_threads(),
    }
    if a.speed:
        doc["speed"] = speed(base, tuple(a.speed_backbones.split(",")))
    md = table(results, baseline, masking, ev["prototypes"])
    if a.speed:
        md += (
            "\n| backbone (grid) | torch threads | images | revise epoch (cached latents, batch) s "
            "| joint epoch (backbone, batch) s | ratio |\n|---|---|---|---|---|---|\n"
        )
        for s in doc["speed"]:
            md += (
                f"| {s['backbone']} ({s['grid'][0]}x{s['grid'][1]}) | {s['threads']} | {s['images']} | "
                f"{s['revise_epoch_s']} ({s['revise_batch_size']}) | {s['backbone_epoch_s']} ({s['batch_size']}) "
                f"| {s['ratio']}x |\n"
            )
    stem = "variants" if a.seed == 0 else f"variants-seed{a.seed}"
    (a.out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    (a.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
