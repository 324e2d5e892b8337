"""Review effort with the simulated user: id vs suspicion order, with and without look-alike offers.

Usage (what docs/review-effort.md reports):

    OMP_NUM_THREADS=1 python bench/review_effort.py --out /tmp/effort [--seeds 0 1 2] [--rounds 3]

For every data family (birds: the demo's data; flowers: the second family) and seed: make the data
(`protocli data synth --family F --seed S`) and train a tiny baseline (`protocli train --backbone
tiny --seed S`) unless OUT/F-S/run exists. Then, on copies of the run:
- first push: `simulate --order id|suspicion [--look-alikes]` (the same `simulate` function) ->
  non-object prototypes to find, prototypes looked at to find 90% / 100% of them, reject keys;
- the masking effect the review TUI shows (effect.MaskEffect, short refit) against `protocli mask`
  (20 last-layer epochs) on the simulated user's rejects, and the time one effect takes;
- rounds: `rounds --rounds N` twice, once with `--order id` and once with `--order suspicion
  --look-alikes` -> per round looked_90/100, and keys to reach zero (one key per non-object
  prototype, the `clicks`, against the keys with look-alike offers);
- per family, summed over its seeds: the two figures the issue sets targets for.
Prints a markdown table per part and writes OUT/review_effort.json. `--signals` and `--offers` print
instead the tables that chose the suspicion score and the offer rule (OUT/signals.json, offers.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILIES = ("birds", "flowers")
VARIANTS = [("id", False), ("id", True), ("suspicion", False), ("suspicion", True)]


def cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "protocli", *args, "-q"], check=True, env=env,
                   cwd=Path(__file__).resolve().parents[1])


def baseline(out: Path, family: str, seed: int, regime: str = "pretrained") -> Path:
    """The run to review: the demo's regime (pretrained encoder, fine-tuned) or trained from scratch."""
    base = out / f"{family}-{seed}"
    data, run = base / "data", base / ("run" if regime == "scratch" else "pretrained")
    if not (data / "synth.json").exists():
        cli("data", "synth", str(data), "--family", family, "--seed", str(seed))
    extra: list[str] = []
    if regime == "pretrained":  # the same commands as the demo and bench/paper_regime.py
        pre, enc = base / "pretrain-data", base / "encoder.safetensors"
        if not (pre / "synth.json").exists():
            cli("data", "synth", str(pre), "--family", family, "--confound", "0.125", "--seed",
                str(1000 + seed), "--train-per-class", "60", "--test-per-class", "10")
        if not enc.exists():
            cli("pretrain", str(pre), str(enc), "--seed", str(seed))
        extra = ["--weights", str(enc)]
    if not (run / "model.safetensors").exists():
        shutil.rmtree(run, ignore_errors=True)
        cli("train", str(data), str(run), "--backbone", "tiny", "--seed", str(seed), "--workers", "0", *extra)
        if regime == "pretrained":  # the demo's settling push: boxes from the pushed vectors
            cli("push", str(run), "--box-map", "after")
    return run


def fresh_copy(run: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("antitypes.json", "rounds.json"))
    return dst


def first_push(run: Path, work: Path, criterion: str) -> dict:
    from protocli.simulate import simulate_run

    rows = {}
    for order, la in VARIANTS:
        r = simulate_run(fresh_copy(run, work), criterion=criterion, order=order, look_alikes=la)
        rows[f"{order}{'+la' if la else ''}"] = {k: r[k] for k in (
            "prototypes", "non_object_to_find", "looked_90", "looked_100", "keys", "one_key_each")}
    return rows


def effect_check(run: Path, work: Path, criterion: str) -> dict:
    import torch

    from protocli.effect import MaskEffect
    from protocli.mask import mask_run
    from protocli.simulate import simulate_run

    w = fresh_copy(run, work)
    rejected = simulate_run(w, criterion=criterion)["rejected_prototypes"]
    t0 = time.perf_counter()
    eff = MaskEffect(w)
    load_s = time.perf_counter() - t0
    e = eff(rejected)
    m = mask_run(w, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    return {"masked": len(rejected), "before": e["accuracy_before"], "masked_now": e["accuracy_masked"],
            "refit": e["accuracy_refit"], "mask_20_epochs": m["accuracy_after"], "effect_s": e["seconds"],
            "load_s": round(load_s, 2)}


def push_truth(run: Path, criterion: str):
    """The latest push of a run: its non-object flags, every suspicion signal, pushed vectors,
    prototypes.json and each prototype's box overlap with the object."""
    import torch

    from protocli import suspicion as su
    from protocli.cache import latents
    from protocli.edge_colour import pushed_pictures
    from protocli.model import pushed_prototypes as pushed_vectors
    from protocli.run import Run
    from protocli.simulate import push_object_stats

    r = Run.open(run)
    cub, push = r.cub(), r.require_push()
    st = push_object_stats(r, cub, push)
    doc, v = st["doc"], pushed_vectors(push)
    z, y = latents(r.load_model("cpu"), cub, "train", crop=r.crop, cache_dir=r.cache_dir, device=torch.device("cpu"))
    md, arg = su.grid_min(z, v)
    pcls = torch.tensor([p["class"] for p in doc["prototypes"]])
    sig = su.signals(md, arg, y.long(), pcls, su.current_weight(r, push, v, pcls), tuple(doc["grid"]), doc, v,
                     pictures=pushed_pictures(r, doc, cub))
    return st[criterion].tolist(), sig, v, doc, st["overlap"].tolist()


def signal_table(run: Path, criterion: str, combos: list[tuple[str, ...]]) -> dict:
    """Share of all prototypes looked at to find 90% of the non-object ones, per signal combination;
    and, in the default order, the object prototypes seen before that point and how many of them
    have under 10% of their box on the object (the near misses of a location score)."""
    from protocli import suspicion as su
    from protocli.effort import walk

    flags, sig, v, _, overlap = push_truth(run, criterion)
    n = int(sum(flags))
    out = {"ideal": round(-(-9 * n // 10) / len(v), 3) if n else None}  # the masks' own order: ceil(0.9 n)
    for combo in combos:
        order = list(range(len(v))) if combo == ("id",) else su.order(su.score(sig, combo))
        w = walk(order, flags)
        out["+".join(combo)] = None if w["looked_90"] is None else round(w["looked_90"] / len(v), 3)
    order = su.order(su.score(sig))
    seen = order[:walk(order, flags)["looked_90"] or 0]
    objects = [j for j in seen if not flags[j]]
    return {"looked_90": out, "default_objects_seen": len(objects),
            "under_10pct": sum(overlap[j] < 0.1 for j in objects)}


def offer_table(run: Path, work: Path, criterion: str, rules, n_rounds: int) -> dict:
    """Keys to reach zero non-object prototypes over the rounds, and on the first push, per offer rule
    (kind, radius factor, part of P: the window below each prototype in suspicion order, or the fixed
    share of the most suspicious), walking in suspicion order.

    The rounds' decisions do not depend on the offers (the masks decide), so one `rounds` run serves
    every rule: on each round's push the simulated reviewer's walk is replayed once per rule with
    that push's order, carried-over verdicts and vectors. 'none' = no offers, one key each."""
    import math

    import torch

    from protocli import simulate as sim
    from protocli import suspicion as su
    from protocli.effort import walk
    from protocli.rounds import rounds_run
    from protocli.runfiles import read_push_doc

    per_round: list[dict] = []
    pairs: dict[str, float] = {}
    inner = sim.review_walk

    def replay(run_, push_dir, vectors, flags, decided, order, look_alikes, cub=None):
        out = inner(run_, push_dir, vectors, flags, decided, order, look_alikes, cub)
        s, doc = su.load(push_dir, len(vectors))["score"], read_push_doc(push_dir)
        ids, f = su.order(s), flags.tolist()
        row = {"none": walk(ids, f, None, decided)["keys"]}
        for kind, rx, part in rules:
            if kind == "window":  # the rule in use: a window of the suspicion order below each prototype
                la = su.look_alikes(vectors, doc, radius_x=rx, scores=s, window=part)
            else:  # the rule before: a fixed set, the most suspicious `part` of all prototypes
                la = su.look_alikes(vectors, doc, radius_x=rx, offered=ids[:math.ceil(part * len(ids))])
            row[f"{kind} {rx:g}x/{part:g}"] = walk(ids, f, la, decided)["keys"]
        if not per_round:  # how selective each radius is: the share of all pairs it admits, first push
            d = su.pair_distances(vectors.numpy())
            med, n = su.nn_median(d), len(d)
            pairs.update({f"{rx:g}x": float((d <= rx * med).sum()) / (n * (n - 1))
                          for rx in sorted({r[1] for r in rules})})
        per_round.append(row)
        return out

    sim.review_walk = replay
    try:
        rounds_run(fresh_copy(run, work), n_rounds=n_rounds, criterion=criterion, order="suspicion", look_alikes=True,
                   generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    finally:
        sim.review_walk = inner
    return {"first": per_round[0], "rounds": {k: sum(r[k] for r in per_round) for k in per_round[0]},
            "pairs_within": pairs}


def rounds(run: Path, work: Path, n: int, criterion: str, order: str, la: bool) -> dict:
    import torch

    from protocli.rounds import rounds_run

    doc = rounds_run(fresh_copy(run, work), n_rounds=n, criterion=criterion, order=order, look_alikes=la,
                     generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    rows = [r for r in doc["rounds"][1:]]
    return {"per_round": [{k: r.get(k) for k in ("round", "non_object", "clicks", "keys", "looked_90",
                                                  "looked_100")} for r in rows],
            "clicks": doc["summary"]["clicks"], "keys": doc["summary"]["keys"],
            "non_object_end": doc["summary"]["non_object_end"], "status": doc["status"]}


def fmt(v) -> str:
    return "-" if v is None else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--criterion", default="box")
    ap.add_argument("--regime", choices=["pretrained", "scratch"], default="pretrained",
                    help="pretrained: the demo's regime (encoder pretrained, then fine-tuned); scratch: tiny from scratch.")
    ap.add_argument("--no-rounds", action="store_true")
    ap.add_argument("--signals", action="store_true",
                    help="Only the table that chose the default score: looked_90 per signal combination.")
    ap.add_argument("--offers", action="store_true",
                    help="Only the table that chose the offer rule: keys over --rounds rounds and on the first push, "
                         "per radius factor and suspicious share.")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.signals:
        return signals_main(a)
    if a.offers:
        return offers_main(a)
    result = {"criterion": a.criterion, "runs": {}}
    for fam in a.families:
        for seed in a.seeds:
            run = baseline(a.out, fam, seed, a.regime)
            work = a.out / f"{fam}-{seed}" / f"work-{a.regime}"
            r = {"first_push": first_push(run, work, a.criterion), "effect": effect_check(run, work, a.criterion)}
            if not a.no_rounds:
                r["rounds_id"] = rounds(run, work, a.rounds, a.criterion, "id", False)
                r["rounds_suspicion_la"] = rounds(run, work, a.rounds, a.criterion, "suspicion", True)
            result["runs"][f"{fam}-{seed}"] = r
            (a.out / "review_effort.json").write_text(json.dumps(result, indent=1))
            print(f"{fam}-{seed} done", file=sys.stderr)
    runs = result["runs"]
    print(f"\nFirst push, {a.criterion} criterion: looked at for 90% / 100% of the non-object prototypes; keys\n")
    print("| run | P | non-object | id 90%/100% | suspicion 90%/100% | keys id | keys +look-alikes (id / susp.) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        f = r["first_push"]
        i, s = f["id"], f["suspicion"]
        print(f"| {name} | {i['prototypes']} | {i['non_object_to_find']} | {fmt(i['looked_90'])}/{fmt(i['looked_100'])}"
              f" | {fmt(s['looked_90'])}/{fmt(s['looked_100'])} | {i['keys']} | {f['id+la']['keys']} / "
              f"{f['suspicion+la']['keys']} |")
    print("\nMasking effect in the status line (short refit) vs `protocli mask` (20 epochs), test accuracy\n")
    print("| run | masked | before | masked, no refit | short refit | mask 20 epochs | effect s | load s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        e = r["effect"]
        print(f"| {name} | {e['masked']} | {e['before']:.3f} | {e['masked_now']:.3f} | {e['refit']:.3f} | "
              f"{e['mask_20_epochs']:.3f} | {e['effect_s']} | {e['load_s']} |")
    if not a.no_rounds:
        print(f"\nRounds ({a.rounds}): per round looked_90 id -> suspicion; clicks (one key each) vs keys with "
              "look-alikes, summed\n")
        print("| run | non-object per round | looked_90 id | looked_90 susp. | looked_100 id | looked_100 susp. "
              "| clicks | keys +look-alikes | non-object at end |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, r in runs.items():
            ri, rs = r["rounds_id"], r["rounds_suspicion_la"]

            def col(rr, k):
                return " ".join(fmt(x.get(k)) for x in rr["per_round"])
            print(f"| {name} | {col(ri, 'non_object')} | {col(ri, 'looked_90')} | {col(rs, 'looked_90')} | "
                  f"{col(ri, 'looked_100')} | {col(rs, 'looked_100')} | {ri['clicks']} | {rs['keys']} | "
                  f"{fmt(rs['non_object_end'])} |")
    totals(runs, not a.no_rounds)
    return 0


def totals(runs: dict, with_rounds: bool) -> None:
    """Per family, summed over its seeds: the issue's two expectations."""
    print("\nPer family, summed over seeds: share of all prototypes looked at to find 90% of the non-object"
          " ones (first push, suspicion order; ideal = the masks' own order), and keys against one key each\n")
    print("| family | runs | looked_90 suspicion | ideal | keys first push | keys over the rounds |")
    print("|---|---|---|---|---|---|")
    for fam in sorted({n.rsplit("-", 1)[0] for n in runs}):
        rs = [r for n, r in runs.items() if n.rsplit("-", 1)[0] == fam]
        seen = sum(r["first_push"]["suspicion"]["looked_90"] or 0 for r in rs)
        total = sum(r["first_push"]["suspicion"]["prototypes"] for r in rs)
        ideal = sum(-(-9 * r["first_push"]["suspicion"]["non_object_to_find"] // 10) for r in rs)
        k1 = sum(r["first_push"]["suspicion+la"]["keys"] for r in rs)
        c1 = sum(r["first_push"]["suspicion+la"]["one_key_each"] for r in rs)
        cell = "-"
        if with_rounds:
            k = sum(r["rounds_suspicion_la"]["keys"] for r in rs)
            c = sum(r["rounds_id"]["clicks"] for r in rs)
            cell = f"{k}/{c} = {k / max(c, 1) - 1:+.1%}"
        print(f"| {fam} | {len(rs)} | {seen}/{total} = {seen / max(total, 1):.1%} | {ideal / max(total, 1):.1%} | "
              f"{k1}/{c1} = {k1 / max(c1, 1) - 1:+.1%} | {cell} |")


def family_means(table: dict, value) -> tuple[list[str], dict]:
    """Families in `table` (keyed 'family-seed') and, per key of its rows, value(rows of a family)."""
    fams = sorted({r.rsplit("-", 1)[0] for r in table})
    keys = list(next(iter(table.values())))
    return fams, {k: [value([table[r][k] for r in table if r.rsplit("-", 1)[0] == f]) for f in fams] for k in keys}


def signals_main(a) -> int:
    import itertools
    import statistics

    from protocli import suspicion as su

    names = [n for n in su.SIGNALS if n != "antitype"]  # no antitypes before the first review
    combos = [("id",)] + [(n,) for n in names] + list(itertools.combinations(names, 2))
    table = {f"{fam}-{seed}": signal_table(baseline(a.out, fam, seed, a.regime), a.criterion, combos)
             for fam in a.families for seed in a.seeds}
    (a.out / "signals.json").write_text(json.dumps(table, indent=1))
    looked = {r: t["looked_90"] for r, t in table.items()}
    fams, means = family_means(looked, lambda v: statistics.mean(x if x is not None else 1.0 for x in v))
    rows = sorted(means, key=lambda c: statistics.mean(means[c]))
    print(f"\nShare of prototypes looked at to find 90% of the non-object ones ({a.criterion}), first push, "
          f"mean over seeds {' '.join(map(str, a.seeds))} (per run: OUT/signals.json)\n")
    print("| order | " + " | ".join(fams) + " |")
    print("|---|" + "---|" * len(fams))
    for c in rows[:12] + [c for c in rows[12:] if c in ("id", "ideal") or "+" not in c]:
        print(f"| {c} | " + " | ".join(f"{m:.3f}" for m in means[c]) + " |")
    for f in fams:
        rs = [t for r, t in table.items() if r.rsplit("-", 1)[0] == f]
        print(f"\n{f}: in the default order, {sum(t['default_objects_seen'] for t in rs)} object prototypes come "
              f"before 90% is found; {sum(t['under_10pct'] for t in rs)} of them have under 10% of their box on the object")
    return 0


def offers_main(a) -> int:
    rules = ([("window", rx, w) for rx in (4, 8, 12, 16, 24, 1e6) for w in (0.1, 0.125, 0.15, 0.2, 0.25)]
             + [("top", rx, share) for rx in (4, 8, 12, 16, 1e6) for share in (0.2, 0.25, 0.3)])
    table = {}
    for fam in a.families:
        for seed in a.seeds:
            run = baseline(a.out, fam, seed, a.regime)
            work = a.out / f"{fam}-{seed}" / f"work-{a.regime}"
            table[f"{fam}-{seed}"] = offer_table(run, work, a.criterion, rules, a.rounds)
    (a.out / "offers.json").write_text(json.dumps(table, indent=1))
    fams, rounds = family_means({r: t["rounds"] for r, t in table.items()}, sum)
    _, first = family_means({r: t["first"] for r, t in table.items()}, sum)
    print(f"\nKeys to reach zero non-object prototypes over the rounds (and on the first push), suspicion order,"
          f" seeds {' '.join(map(str, a.seeds))}; rule = kind radius factor / part of P (window: below each prototype"
          f" in suspicion order; top: the most suspicious share); 'none' = one key each\n")
    print("| rule | " + " | ".join(f"{f} rounds | {f} first push" for f in fams) + " |")
    print("|---|" + "---|---|" * len(fams))
    for rule in rounds:
        cells = []
        for i in range(len(fams)):
            for t in (rounds, first):
                cells.append(f"{t[rule][i]} ({t[rule][i] / max(t['none'][i], 1) - 1:+.0%})")
        print(f"| {rule} | " + " | ".join(cells) + " |")
    within = {r: t["pairs_within"] for r, t in table.items()}
    fams, share = family_means(within, lambda v: sum(v) / len(v))
    print("\nShare of all pairs of prototypes within each radius (first push, mean over seeds): "
          + "; ".join(f"{rx} " + " / ".join(f"{f} {share[rx][i]:.2f}" for i, f in enumerate(fams)) for rx in share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
