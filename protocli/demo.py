"""`protocli demo`: an output folder -> the paper's three conditions on built-in synthetic data, compared.

The paper's regime at CPU scale: an encoder pretrained on broad data, fine-tuned on a confounded
set. Steps, each a stage function called in this process (their progress bars show on stderr):
1. OUT/data: a confounded synthetic dataset (`data synth`, parameters DATA), made when missing;
2. OUT/encoder.safetensors: the `tiny` encoder pretrained as a plain classifier (`pretrain`) on
   OUT/pretrain-data, birds of the same classes on uniformly drawn backgrounds (PRETRAIN_DATA, other
   images than DATA's) -- the stand-in for ImageNet weights. Skipped with `pretrained=False`;
3. OUT/runs/baseline: ProtoPNet fine-tuned from that encoder (exactly `protocli train DATA
   --backbone tiny --weights OUT/encoder.safetensors`, the `finetune` recipe), then pushed once more
   with boxes of the pushed vectors (`push --box-map after`, the boxes revision judges by), so that
   the three rows below are counted alike;
4. OUT/runs/revision: a fork of the baseline revised in ROUNDS rounds of Alg. 1 with the simulated
   user (`rounds`, box criterion); forked before the baseline is reviewed, so that its first
   round's rejects count as clicks;
5. the simulated user on the baseline's push (`simulate`), then OUT/runs/masking: a fork with the
   rejected prototypes masked and the last layer fine-tuned (`mask`);
6. `evaluate` of each condition -> one row each (train and test accuracy, non-object prototypes,
   overlap >= .75, clicks), printed as a table and written to OUT/results.json;
7. `report` on the revision run (its rounds, plus the three rows), and the command that opens the
   review TUI on it.
Finished steps are reused when the demo runs again on the same OUT; a condition whose run is
incomplete is made again. The constants below are sized so the whole demo takes under 5 minutes
on a 2-core CPU (bench/demo_time.py measures it).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from protocli.console import info, print_table, warn
from protocli.errors import BadInput
from protocli.files import atomic_write_json, read_json

# The default `data synth` parameters, written out so that the README's numbers
# stay tied to these values. The baseline is the `tiny` recipe (protocli/recipes.py), i.e. exactly
# `protocli train DATA --backbone tiny`.
DATA = {"classes": 8, "train_per_class": 40, "test_per_class": 20, "size": 96, "confound": 0.8}
# Pretraining data: the same classes on backgrounds drawn uniformly (1/8 = no class information),
# drawn with seed + PRETRAIN_SEED, so no image is one of DATA's.
PRETRAIN_DATA = {"train_per_class": 60, "test_per_class": 10, "confound": 0.125}  # over DATA
PRETRAIN_SEED = 1000
PRETRAIN: dict = {}  # `protocli pretrain` defaults
TRAIN = {"recipe": "auto", "backbone": "tiny"}
ROUNDS = 5
ROUND_EPOCHS: int | None = None  # None: rounds_run's default number of revision epochs per round
MASK_LAST_EPOCHS = 20
# Result keys (as in `evaluate --json`) -> short headers that keep the table within 80 columns.
COLUMNS = {"condition": "condition", "train_accuracy": "train", "accuracy": "test", "non_object": "non-obj",
           "overlap_ge_75": "ov>=.75", "clicks": "clicks", "active_prototypes": "active",
           "activation_precision": "APr"}


def _stages(run_dir: Path) -> set[str]:
    from protocli.runfiles import read_manifest

    return {s["kind"] for s in read_manifest(run_dir)["stages"]} if (run_dir / "manifest.json").exists() else set()


def _fresh_fork(path: Path, base: Path) -> None:
    """Remove an incomplete demo fork of `base` at `path`; anything else there is the user's: refuse."""
    if not path.exists():
        return
    manifest = path / "manifest.json"
    origins = read_json(manifest, "run manifest").get("forked_from", []) if manifest.exists() else []
    if not isinstance(origins, list) or not any(isinstance(o, dict) and Path(str(o.get("run"))) == base.resolve()
                                                for o in origins):
        raise BadInput("exists and is not a demo fork of the baseline; remove it or choose another --dir", path)
    shutil.rmtree(path)


def make_data(data: Path, seed: int, params: dict | None = None, step: str = "[1/7] data") -> dict:
    """The synthetic dataset at `data` (parameters `params`, default DATA), made unless one is there."""
    from protocli.data.synth import synth

    want = DATA if params is None else params
    if (data / "synth.json").exists():
        have = read_json(data / "synth.json", "synthetic dataset parameters")
        info(f"{step}: using the synthetic dataset in {data}")
        differ = {k: have.get(k) for k, v in want.items() if have.get(k) != v}
        if differ:
            warn(f"{data} was made with {differ}, not the demo's {want}: numbers will differ from the README")
        return {"path": str(data), "reused": True, **{k: have.get(k) for k in (*want, "seed")}}
    if data.exists() and any(data.iterdir()):
        raise BadInput("folder exists and holds no synthetic dataset (no synth.json); choose another --dir", data)
    info(f"{step}: writing a synthetic dataset to {data}")
    res = synth(data, seed=seed, **want)
    return {"path": str(data), "reused": False, **{k: res.get(k) for k in (*want, "seed", "seconds")}}


def make_encoder(out: Path, seed: int, device) -> Path:
    """OUT/encoder.safetensors: `tiny` pretrained as a classifier on OUT/pretrain-data (made when missing)."""
    from protocli.pretrain import pretrain
    from protocli.runtime import seed_everything

    enc = out / "encoder.safetensors"
    make_data(out / "pretrain-data", seed + PRETRAIN_SEED, {**DATA, **PRETRAIN_DATA}, step="[2/7] encoder")
    if enc.exists():
        info(f"[2/7] encoder: using {enc}")
        return enc
    info(f"[2/7] encoder: pretraining tiny as a classifier on uniform backgrounds -> {enc}")
    # seeded as `protocli pretrain --seed` seeds it (the initial weights come from the global generator)
    pretrain(out / "pretrain-data", enc, backbone=TRAIN["backbone"], img_size=DATA["size"], device=device,
             generator=seed_everything(seed), **PRETRAIN)
    return enc


def train_baseline(data: Path, base: Path, device, seed: int, encoder: Path | None) -> None:
    from protocli.cache import latents, masks
    from protocli.push import ensure_push
    from protocli.recipes import make_config
    from protocli.run import Run
    from protocli.train import train_run

    done = _stages(base)
    if "last" in done:
        info(f"[3/7] baseline: using the trained run {base}")
    else:
        how = f"fine-tuning from {encoder}" if encoder else "from scratch"
        info(f"[3/7] baseline: training {TRAIN['backbone']} ProtoPNet ({how}) into {base}")
        cfg = make_config(**TRAIN, seed=seed, weights=str(encoder) if encoder else None)
        train_run(data, base, cfg, device=device, resume=(base / "manifest.json").exists())
    run = Run.open(base)
    model = run.load_model(device)
    cub = run.cub()
    ztr, ytr = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=device)
    ensure_push(run, model, cub, ztr, ytr, device, box_map="after")
    # The test masks (for activation precision) are built once here: both forks hard-link the cache.
    if cub.has_masks:
        masks(cub, "test", size=model.cfg.img_size, crop=run.crop, cache_dir=run.cache_dir)


def revise_rounds(base: Path, rev: Path, device, seed: int) -> dict:
    from protocli.rounds import rounds_run

    table = rev / "rounds.json"
    done = read_json(table, "rounds file") if table.exists() else {}
    if isinstance(done, dict) and done.get("status") in ("done", "converged"):
        info(f"[4/7] revision: using the rounds in {rev}")
        return done
    _fresh_fork(rev, base)
    info(f"[4/7] revision: {ROUNDS} rounds with the simulated user on a fork, {rev}")
    kw = {} if ROUND_EPOCHS is None else {"epochs": ROUND_EPOCHS}
    return rounds_run(base, n_rounds=ROUNDS, user="simulated", criterion="box", out=rev, device=device,
                      generator=torch.Generator().manual_seed(seed), **kw)


def mask_condition(base: Path, mk: Path, device, seed: int) -> int:
    """Simulated user on the baseline, then the masking fork; returns the number of rejects (clicks)."""
    from protocli.mask import mask_run
    from protocli.simulate import simulate_run

    info("[5/7] masking: the simulated user reviews the baseline; rejected prototypes are masked")
    rejected = simulate_run(base, criterion="box")["rejected"]
    if "mask" not in _stages(mk):
        _fresh_fork(mk, base)
        mask_run(base, last_epochs=MASK_LAST_EPOCHS, out=mk, device=device,
                 generator=torch.Generator().manual_seed(seed))
    return rejected


def demo_run(out: Path = Path("demo"), device: torch.device | None = None, seed: int = 0,
             pretrained: bool = True) -> dict:
    """Run the whole demo into `out`; returns the comparison rows, paths and timings.

    `pretrained=False` trains the baseline from scratch (the `tiny` recipe) instead."""
    from protocli.evaluate import evaluate_run
    from protocli.report import report_run

    t_all = time.perf_counter()
    device = device or torch.device("cpu")
    out = Path(out)
    data, runs = out / "data", out / "runs"
    base, mk, rev = runs / "baseline", runs / "masking", runs / "revision"
    seconds: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        res = fn(*args)
        seconds[name] = round(time.perf_counter() - t0, 1)
        return res

    data_info = timed("data", make_data, data, seed)
    encoder = timed("encoder", make_encoder, out, seed, device) if pretrained else None
    timed("baseline", train_baseline, data, base, device, seed, encoder)
    rounds = timed("revision", revise_rounds, base, rev, device, seed)
    mask_clicks = timed("masking", mask_condition, base, mk, device, seed)

    info("[6/7] evaluate: the three conditions")
    t0 = time.perf_counter()
    clicks = {"baseline": 0, "masking": mask_clicks, "revision": sum(r["clicks"] for r in rounds["rounds"])}
    rows = []
    for name, path in (("baseline", base), ("masking", mk), ("revision", rev)):
        ev = evaluate_run(path, criterion="box", device=device)
        rows.append({"condition": name, **{k: ev.get(k) for k in COLUMNS if k not in ("condition", "clicks")},
                     "clicks": clicks[name], "run": str(path)})
    seconds["evaluate"] = round(time.perf_counter() - t0, 1)

    info(f"[7/7] report: figures and report.md of {rev}")
    rep = timed("report", lambda: report_run(rev, conditions=rows, device=device, seed=seed))
    seconds["total"] = round(time.perf_counter() - t_all, 1)
    review = f"protocli review {rev}"
    result = {"out": str(out), "data": data_info, "conditions": rows, "rounds": rounds["rounds"],
              "report": rep["report"], "figures": rep["figures"], "review": review, "seconds": seconds,
              "config": {"data": DATA, "pretrain_data": {**DATA, **PRETRAIN_DATA} if pretrained else None,
                         "encoder": str(encoder) if encoder else None, "train": TRAIN, "rounds": ROUNDS, "round_epochs": ROUND_EPOCHS,
                         "mask_last_epochs": MASK_LAST_EPOCHS, "seed": seed, "device": str(device)}}
    atomic_write_json(out / "results.json", result)
    print_table("protocli demo: accuracy on train and on test (random backgrounds), non-object prototypes, "
                "prototypes with object overlap >= .75, clicks, active prototypes, activation precision",
                [{COLUMNS[k]: r[k] for k in COLUMNS} for r in rows], list(COLUMNS.values()))
    info(f"report: {rep['report']}\nresults: {out / 'results.json'}  ({seconds['total']} s)")
    info(f"look at the prototypes yourself: {review}")
    return result
