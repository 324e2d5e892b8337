"""The table that chose `edge_colour`'s settings: its variants, alone and with box_gap.

Usage (what docs/review-effort.md reports; the choice was made on the birds 0-9):

    OMP_NUM_THREADS=1 python bench/edge_variants.py --out /tmp/effort --families birds --seeds $(seq 0 9)

On the first push of each baseline of bench/review_effort.py (made there when missing): prototypes
looked at to find 90% of the non-object ones (box criterion), summed over the runs, for each
variant of the signal: the edge ring's width (1/24 or 1/12 of the side), the k-th nearest edge pixel
(1 or 5), and how a box's per-pixel distances become one number (the largest, the 99th percentile,
or the count above 0.5), each alone and averaged (percentile ranks) with box_gap. The code's setting
is ring 1/12, k 5, largest. Writes OUT/edge_variants.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review_effort import FAMILIES, baseline, push_truth  # noqa: E402

RINGS, KS, REDUCE = (1 / 24, 1 / 12), (1, 5), ("largest", "q99", "count>0.5")


def variants(run: Path, criterion: str) -> dict:
    """Looks to find 90% per variant, and the ideal (ceil(0.9 n))."""
    import torch

    from protocli import suspicion as su
    from protocli.edge_colour import WHOLE_EDGE, _kth_sq, box_and_edge, edge_ring, pushed_pictures
    from protocli.effort import walk
    from protocli.run import Run

    flags, sig, _, doc, _ = push_truth(run, criterion)
    pics = pushed_pictures(Run.open(run), doc)
    S = int(doc["img_size"])  # the synthetic pictures are small: no shrinking, as in the code
    gap = su.percentile_rank(sig["box_gap"])
    out = {"ideal": -(-9 * int(sum(flags)) // 10)}
    for ring in RINGS:
        edge = edge_ring(S, ring)
        for k in KS:
            values = {name: [] for name in REDUCE}
            for p in doc["prototypes"]:  # every pixel's distance, not just the largest: bench only
                img = torch.from_numpy(pics[p["image_index"]].copy()).float() / 255
                box, ref = box_and_edge(img, p["box"], edge)
                if len(ref) == 0:  # the box covers the whole edge: the object, as in the code
                    d = torch.full((len(box),), WHOLE_EDGE)
                else:
                    d = _kth_sq(box, ref, min(k, len(ref))).sqrt()
                values["largest"].append(float(d.max()))
                values["q99"].append(float(d.quantile(0.99)))
                values["count>0.5"].append(float((d > 0.5).sum()))
            for name, v in values.items():
                rank = su.percentile_rank(-torch.tensor(v))  # fewer / smaller distances = more suspicious
                label = f"ring 1/{round(1 / ring)} k{k} {name}"
                out[label] = walk(su.order(rank), flags)["looked_90"]
                out[label + " + box_gap"] = walk(su.order(rank + gap), flags)["looked_90"]
    out["box_gap"] = walk(su.order(gap), flags)["looked_90"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    ap.add_argument("--criterion", default="box")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    table = {f"{fam}-{seed}": variants(baseline(a.out, fam, seed), a.criterion)
             for fam in a.families for seed in a.seeds}
    (a.out / "edge_variants.json").write_text(json.dumps(table, indent=1))
    for fam in a.families:
        rows = [t for name, t in table.items() if name.rsplit("-", 1)[0] == fam]
        total = {key: sum(t[key] if t[key] is not None else 80 for t in rows) for key in rows[0]}
        print(f"\n{fam}, seeds {' '.join(map(str, a.seeds))}: prototypes looked at to find 90%, summed "
              f"({80 * len(rows)} prototypes)\n")
        print("| order | looks |")
        print("|---|---|")
        for key in sorted(total, key=total.get):
            print(f"| {key} | {total[key]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
