"""How far can a mask-free suspicion score go? Orders built WITH the masks, as bounds for those without.

Usage (what docs/review-effort.md reports):

    OMP_NUM_THREADS=1 python bench/suspicion_bounds.py --out /tmp/effort --seeds $(seq 0 14)

On the first push of each baseline of bench/review_effort.py (made there when missing), the share
of all prototypes looked at to find 90% of the non-object ones (box criterion), in these orders:
- ideal: the masks' own order, ceil(0.9 n) of P;
- box_gap, edge_colour, default: the mask-free signals and the score the TUI uses;
- where (oracle): the share of all training images whose object mask meets the prototype's box, at
  the same place: the best any score can do that knows only where a box lies;
- grid mask (oracle): the pushed image's own mask shrunk to the latent grid (the cell criterion's
  masks), bilinearly upsampled, summed under the box: what a perfect per-cell object map at the
  latents' resolution would give;
- probe on latents / pixels (oracle): a logistic regression trained with the masks (two folds of
  images) to tell object cells from background cells, from the latent vector or from the cell's
  mean and variance of colour, each with the cell's position; the box's most object-like value
  (upsampled) orders it. Whether the information is in the latents at all, or only in the pixels.
Prints the mean per family and writes OUT/bounds.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review_effort import FAMILIES, baseline, family_means, push_truth  # noqa: E402


def logistic(a, t):
    """L2-regularised logistic regression by L-BFGS: a (n, F) standardised, t (n,) 0/1 -> w, b."""
    import torch
    import torch.nn.functional as F

    w = torch.zeros(a.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w + b, t) + 1e-3 * w.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


def probe(x, target, folds: int = 2):
    """Out-of-fold P(object) per cell: x (N, F, H, W), target bool (N, H, W) -> (N, H, W)."""
    import torch

    x = x.permute(0, 2, 3, 1)
    pred = torch.zeros(x.shape[:3])
    fold = torch.arange(len(x)) % folds
    for k in range(folds):
        tr = fold != k
        a = x[tr].reshape(-1, x.shape[-1])
        mu, sd = a.mean(0), a.std(0) + 1e-6
        w, b = logistic((a - mu) / sd, target[tr].float().reshape(-1))
        pred[~tr] = torch.sigmoid(((x[~tr] - mu) / sd) @ w + b)
    return pred


def under_box(maps, doc: dict, reduce: str):
    """Per prototype: the pushed image's map (N, H, W), bilinearly upsampled to the input size,
    reduced ('sum' or 'max') over its box: (P,)."""
    import torch
    import torch.nn.functional as F

    S = int(doc["img_size"])
    out = []
    for p in doc["prototypes"]:
        x0, y0, x1, y1 = p["box"]
        up = F.interpolate(maps[p["image_index"]][None, None].float(), size=(S, S), mode="bilinear",
                           align_corners=False)[0, 0, y0:y1, x0:x1]
        out.append(float(up.sum() if reduce == "sum" else up.max()))
    return torch.tensor(out)


def bounds(run: Path, criterion: str) -> dict:
    import numpy as np
    import torch

    from protocli import suspicion as su
    from protocli.cache import grid_masks, latents, masks
    from protocli.effort import walk
    from protocli.pictures import load_input_images
    from protocli.run import Run

    flags, sig, v, doc, _ = push_truth(run, criterion)
    r = Run.open(run)
    cub, S, crop = r.cub(), int(doc["img_size"]), bool(doc.get("crop", r.crop))
    m = masks(cub, "train", size=S, crop=crop, cache_dir=r.cache_dir)
    gm = grid_masks(cub, "train", grid=doc["grid"], crop=crop, cache_dir=r.cache_dir).float() / 255
    z, _ = latents(r.load_model("cpu"), cub, "train", crop=r.crop, cache_dir=r.cache_dir, device=torch.device("cpu"))
    N, _, H, W = z.shape
    pics = load_input_images(cub, range(N), S, crop)
    img = torch.from_numpy(np.stack([pics[i] for i in range(N)])).permute(0, 3, 1, 2).float() / 255
    c = S // H
    mean = torch.nn.functional.avg_pool2d(img, c)[..., :H, :W]
    var = torch.nn.functional.avg_pool2d(img.square(), c)[..., :H, :W] - mean.square()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    pos = torch.stack([yy, xx, yy ** 2, xx ** 2, (yy ** 2 + xx ** 2).sqrt()]).expand(N, 5, H, W)
    where = torch.tensor([float(m[:, y0:y1, x0:x1].flatten(1).any(1).float().mean())
                          for x0, y0, x1, y1 in (p["box"] for p in doc["prototypes"])])
    orders = {"box_gap": su.score(sig, ("box_gap",)), "edge_colour": su.score(sig, ("edge_colour",)),
              "default": su.score(sig), "where (oracle)": -where,
              "grid mask (oracle)": -under_box(gm, doc, "sum"),
              "probe on latents (oracle)": -under_box(probe(torch.cat([z.float(), pos], 1), gm > 0), doc, "max"),
              "probe on pixels (oracle)": -under_box(probe(torch.cat([mean, var, pos], 1), gm > 0), doc, "max")}
    n, P = int(sum(flags)), len(flags)
    out = {"ideal": round(-(-9 * n // 10) / P, 4)}
    for name, s in orders.items():
        looked = walk(su.order(s), flags)["looked_90"]
        out[name] = None if looked is None else round(looked / P, 4)
    return out


def main(argv=None) -> int:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--criterion", default="box")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    table = {}
    for fam in a.families:
        for seed in a.seeds:
            table[f"{fam}-{seed}"] = bounds(baseline(a.out, fam, seed), a.criterion)
            print(f"{fam}-{seed} done", file=sys.stderr)
    (a.out / "bounds.json").write_text(json.dumps(table, indent=1))
    fams, means = family_means(table, lambda v: statistics.mean(x if x is not None else 1.0 for x in v))
    print(f"\nShare of prototypes looked at to find 90% of the non-object ones ({a.criterion}), first push, "
          f"mean over seeds {' '.join(map(str, a.seeds))}; (oracle) = built with the masks\n")
    print("| order | " + " | ".join(fams) + " |")
    print("|---|" + "---|" * len(fams))
    for name, vals in means.items():
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in vals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
