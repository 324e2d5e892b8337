"""Revision in both regimes, on both synthetic families, over seeds -> a JSON log and a markdown table.

For each family (birds: the demo's data, where the defaults were chosen; flowers: built only to
confirm them) and seed, through the command line exactly as a user would run it:

  protocli data synth DATA --family F --seed S                        (confound 0.8, the default)
  pretrained: protocli data synth PRE --family F --confound 0.125 --seed 1000+S   (uniform backgrounds)
              protocli pretrain PRE ENC.safetensors --seed S
              protocli train DATA R --backbone tiny --weights ENC.safetensors --seed S
  scratch:    protocli train DATA R --backbone tiny --seed S
  both:       protocli rounds R --rounds 5 --out R-rounds --seed S --json

Every default is the command's own; nothing here is tuned per family. Writes OUT/results.jsonl
(one line per run, appended as each finishes, so an interrupted bench keeps what it measured) and
OUT/table.md. Usage:

  python bench/paper_regime.py --out /tmp/regime [--families birds flowers] [--seeds 0 1 2]
      [--regimes pretrained scratch]

About 1-1.5 minutes per (family, seed, regime) on a quiet 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str) -> dict:
    cmd = [sys.executable, "-m", "protocli", *args, "--json", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return json.loads(res.stdout)


def one(out: Path, family: str, seed: int, regime: str) -> dict:
    t0 = time.perf_counter()
    base = out / f"{family}-{seed}"
    data = base / "data"
    if not data.exists():
        cli("data", "synth", str(data), "--family", family, "--seed", str(seed))
    run, rounds = base / f"{regime}", base / f"{regime}-rounds"
    for p in (run, rounds):
        shutil.rmtree(p, ignore_errors=True)
    extra: list[str] = []
    pre = {}
    if regime == "pretrained":
        pre_data, enc = base / "pretrain-data", base / "encoder.safetensors"
        if not pre_data.exists():
            cli("data", "synth", str(pre_data), "--family", family, "--confound", "0.125",
                "--seed", str(1000 + seed), "--train-per-class", "60", "--test-per-class", "10")
        if not enc.exists():
            r = cli("pretrain", str(pre_data), str(enc), "--seed", str(seed))
            pre = {"held_out_accuracy": r["held_out_accuracy"], "seconds": r["seconds"]}
        extra = ["--weights", str(enc)]
    tr = cli("train", str(data), str(run), "--backbone", "tiny", "--seed", str(seed), *extra)
    ev = cli("evaluate", str(run))
    rd = cli("rounds", str(run), "--rounds", "5", "--out", str(rounds), "--seed", str(seed))
    rows = rd["rounds"]
    return {
        "family": family, "seed": seed, "regime": regime, "pretrain": pre,
        "baseline": {"accuracy": ev["accuracy"], "train_accuracy": ev["train_accuracy"],
                     "non_object_training_push": ev.get("non_object_box"), "recipe": tr.get("recipe")},
        "non_object": [r["non_object_after"] for r in rows],
        "unique": [r["unique"] for r in rows],
        "clicks": sum(r["clicks"] for r in rows),
        "accuracy": [r["accuracy_after_ft"] for r in rows],
        "status": rd["status"], "prototypes": rd["summary"]["prototypes"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(results: list[dict]) -> str:
    head = ("| family | regime | seed | non-object: baseline, after rounds 1-5 | unique patches | clicks | "
            "test accuracy before -> after |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        no = r["non_object"]
        path = " ".join(str(v) for v in no) + " -" * (6 - len(no))
        lines.append(f"| {r['family']} | {r['regime']} | {r['seed']} | {path} | {r['unique'][0]} -> "
                     f"{r['unique'][-1]} | {r['clicks']} | {r['accuracy'][0]:.3f} -> {r['accuracy'][-1]:.3f} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", nargs="+", default=["birds", "flowers"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--regimes", nargs="+", default=["pretrained", "scratch"])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    results = []
    for family in args.families:
        for regime in args.regimes:
            for seed in args.seeds:
                r = one(args.out, family, seed, regime)
                results.append(r)
                with log.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(table([r]).splitlines()[-1], flush=True)
    (args.out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
