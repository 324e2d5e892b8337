"""Suspicion: run + one push -> per-prototype suspicion scores and look-alikes, no masks needed.

The review is the method's real cost, so the TUI can show the prototypes most likely to show
background first, and offer a rejected prototype's look-alikes for rejection at once. Everything
here comes from the run alone: the push's pushed vectors and prototypes.json, the cached latents of
the (unaugmented) training images, the pushed images' pixels, the last layer and the antitype set
Q. Signals, each oriented so that higher = more suspicious:

- evenness:  normalised entropy over classes of the prototype's mean similarity per class
             (a part of its own class fires on its own class; a texture fires everywhere);
             `specific` is its opposite (a confounded background is class-specific);
- other:     share of other classes among its nearest training images; `own` is its opposite;
- weight:    minus its own-class last-layer weight (the model leans little on it); `strong` the
             opposite (the model leans on a confound);
- ubiquity:  its mean similarity over all training images;
- antitype:  minus the squared distance to the nearest antitype vector from earlier pushes;
- duplicate: it shares its patch with another prototype;
- border:    how far from the image centre it fires, averaged over its nearest training images
             (objects sit in the middle of a cropped image, background around it);
- box_gap:   how far its 95th-percentile box on the pushed image stays from the image centre;
- edge_colour: minus how unlike the pushed image's edge the most unusual pixel of that box is (every
             colour of a background box is also found on the edge; an object pixel, even a few, is
             not); needs the pushed images' pixels (protocli/edge_colour.py);
- distance:  its push distance (how far it had drifted from any real patch).

`score` ranks prototypes by the mean of the chosen signals' percentile ranks (so no signal needs a
scale). The default combination was chosen by measurement (bench/review_effort.py,
docs/review-effort.md). `suspicion.json` in the push folder caches the result for the TUI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from protocli.errors import BadInput
from protocli.files import atomic_write_json, read_json

SIGNALS = ("evenness", "specific", "other", "own", "weight", "strong", "ubiquity", "antitype", "duplicate",
           "border", "box_gap", "edge_colour", "distance")
DEFAULT = ("edge_colour",)  # chosen on the birds, confirmed on the flowers (docs/review-effort.md)
# Look-alike candidates kept per prototype, nearest first. A reject offers the first effort.PER_REJECT
# of them still undecided; in later rounds most prototypes carry a verdict over, so keep more.
KEPT = 24
# Which look-alikes a prototype offers: those within RADIUS_X x the median nearest-neighbour distance
# that rank below it in suspicion order, within a window of WINDOW x P ranks that starts at it (the
# ones a reviewer walking down the order meets next). Chosen on ten seeds of the birds family, checked
# on the flowers and on five fresh seeds of each (bench/review_effort.py --offers,
# docs/review-effort.md); chosen again (was 16 / 0.125) when the score became edge_colour.
RADIUS_X = 24.0
WINDOW = 0.1
FILE = "suspicion.json"
VERSION = 3  # 2: look-alikes limited by suspicion (the rule itself is OFFER_RULE); 3: edge_colour
OFFER_RULE = ["window", RADIUS_X, WINDOW, KEPT]  # kept in suspicion.json: a cache made under another rule is made again

if TYPE_CHECKING:
    import torch


def grid_min(z: torch.Tensor, protos: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Min over the grid of squared distances and its flat cell: z (N, D, H, W), protos (P, D) -> (N, P) x2."""
    import torch

    from protocli.console import check_cancel

    p = protos.float()
    p2 = p.square().sum(1)[None, :, None]
    mins, args = [], []
    for i in range(0, len(z), batch_size):
        check_cancel()
        zf = z[i:i + batch_size].float().flatten(2)  # (B, D, HW)
        d = (zf.square().sum(1, keepdim=True) - 2 * torch.matmul(p, zf) + p2).clamp_min(0)
        m, a = d.min(dim=2)
        mins.append(m)
        args.append(a)
    if not mins:
        return torch.empty(0, len(p)), torch.empty(0, len(p), dtype=torch.long)
    return torch.cat(mins), torch.cat(args)


def percentile_rank(x: torch.Tensor) -> torch.Tensor:
    """Rank in [0, 1] (ties share their mean rank), so signals of any scale can be averaged."""
    import torch

    n = len(x)
    if n < 2:
        return torch.zeros(n)
    order = torch.argsort(x.double(), stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    # ties: average rank within each group of equal values
    _, inv = torch.unique(x.double(), return_inverse=True)
    total = torch.zeros(int(inv.max()) + 1, dtype=torch.float64).index_add_(0, inv, ranks)
    count = torch.zeros_like(total).index_add_(0, inv, torch.ones(n, dtype=torch.float64))
    return (total[inv] / count[inv] / (n - 1)).float()


def signals(min_d: torch.Tensor, arg: torch.Tensor, y: torch.Tensor, pcls: torch.Tensor, weight: torch.Tensor,
            grid: tuple[int, int], doc: dict, vectors: torch.Tensor, antitypes: torch.Tensor | None = None,
            k: int | None = None, pictures: dict | None = None, device=None) -> dict[str, torch.Tensor]:
    """Every signal (P,) from min distances/cells (N, P) of the training images and the push.

    `k` nearest images per prototype for `other` and `border` (default: images per class).
    `pictures` (train index -> (S, S, 3) uint8, the pushed images) adds `edge_colour` (on `device`)."""
    import torch

    from protocli.model import log_similarity

    N, P = min_d.shape
    K = int(max(int(y.max()) + 1 if N else 0, int(pcls.max()) + 1 if P else 0))
    sim = log_similarity(min_d)  # (N, P), >= 0
    onehot = torch.nn.functional.one_hot(y, K).float()  # (N, K)
    per_class = onehot.T @ sim / onehot.sum(0).clamp_min(1)[:, None]  # (K, P)
    p = per_class / per_class.sum(0, keepdim=True).clamp_min(1e-12)
    evenness = -(p * p.clamp_min(1e-12).log()).sum(0) / torch.log(torch.tensor(float(max(K, 2))))

    k = max(1, min(N, k or max(1, N // max(K, 1))))
    near = torch.topk(min_d, k, dim=0, largest=False).indices  # (k, P)
    other = (y[near] != pcls[None, :]).float().mean(0)
    H, W = grid
    cells = arg.gather(0, near)  # (k, P) flat cells of the nearest images
    ch, cw = (cells // W).float(), (cells % W).float()
    # 0 at the centre, 1 at a corner: distance from the centre in units of the half-grid
    border = torch.sqrt(((ch - (H - 1) / 2) / max(H / 2, 1)) ** 2 + ((cw - (W - 1) / 2) / max(W / 2, 1)) ** 2)
    border = (border / 2 ** 0.5).mean(0)

    protos = doc["prototypes"]
    key = torch.as_tensor(patch_ids(doc))
    _, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    dup = (counts[inv] > 1).float()
    # push distance: "projection_distance" (None when no patch was found), "distance" in older pushes
    dist = torch.tensor([float(p.get("projection_distance", p.get("distance")) or 0.0) for p in protos])
    box = torch.tensor([p["box"] for p in protos], dtype=torch.float32).reshape(-1, 4)
    c = (float(doc.get("img_size", 1)) - 1) / 2
    gap_x = (torch.maximum(box[:, 0] - c, c - (box[:, 2] - 1))).clamp_min(0)
    gap_y = (torch.maximum(box[:, 1] - c, c - (box[:, 3] - 1))).clamp_min(0)
    box_gap = torch.sqrt(gap_x ** 2 + gap_y ** 2) / max(c, 1.0)
    if antitypes is not None and len(antitypes):
        anti = -torch.cdist(vectors.float(), antitypes.float()).square().min(1).values
    else:
        anti = torch.zeros(P)
    out = {"evenness": evenness, "specific": -evenness, "other": other, "own": -other,
           "weight": -weight.float(), "strong": weight.float(), "ubiquity": sim.mean(0), "antitype": anti,
           "duplicate": dup, "border": border, "box_gap": box_gap, "distance": dist}
    if pictures is not None:
        from protocli.edge_colour import edge_colour

        out["edge_colour"] = edge_colour(pictures, doc, device=device)
    return out


def score(sig: dict[str, torch.Tensor], names=DEFAULT) -> torch.Tensor:
    """Mean percentile rank of the named signals (P,): higher = look at it earlier."""
    import torch

    bad = [n for n in names if n not in SIGNALS]
    if bad or not names:
        raise BadInput(f"unknown suspicion signal(s) {bad}; choose from {', '.join(SIGNALS)}")
    missing = [n for n in names if n not in sig]
    if missing:  # edge_colour needs the pictures: signals(..., pictures=...)
        raise ValueError(f"signal(s) {missing} were not computed")
    return torch.stack([percentile_rank(sig[n]) for n in names]).mean(0)


def order(scores, ids=None) -> list[int]:
    """Prototype ids by descending score; equal scores keep id order."""
    import torch

    s = torch.as_tensor(scores, dtype=torch.float64)
    idx = torch.argsort(-s, stable=True)
    return [int(i) for i in idx] if ids is None else [int(ids[i]) for i in idx]


def patch_ids(doc: dict) -> list[int]:
    """One id per distinct pushed patch (image, cell): prototypes with equal ids sit on the same patch."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault((p["image"], tuple(p["cell"])), len(ids)) for p in doc["prototypes"]]


def pair_distances(vectors):
    """Squared L2 distances between pushed vectors, (P, P) float64 numpy, inf on the diagonal."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    sq = (v * v).sum(1)
    d = np.maximum(sq[:, None] - 2 * v @ v.T + sq[None, :], 0.0)
    np.fill_diagonal(d, np.inf)
    return d


def nn_median(d) -> float:
    """Median over prototypes of the squared distance to the nearest other one: the radius unit."""
    import numpy as np

    return float(np.median(d.min(1)))


def look_alikes(vectors, doc: dict, k: int = KEPT, radius: float | None = None, scores=None,
                window: float = WINDOW, offered=None, radius_x: float = RADIUS_X) -> list[list[int]]:
    """Per prototype: the others on the same patch, then the nearest pushed vectors, at most k in all
    (candidates: the offer takes the first effort.PER_REJECT of them still undecided).

    Beyond the same patch a prototype is a candidate only within `radius` (squared L2; default
    `radius_x` times the median over prototypes of the squared distance to the nearest other one),
    and, with `scores`, only when it ranks below the offering prototype in suspicion order, in the
    window of ceil(window x P) ranks (at least 2) that starts at the offering prototype. `offered`
    (ids) narrows the candidates to a fixed set (the review passes [] before the scores arrive: the
    same patch only). The window is what makes offers pay:
    latent nearness alone offers as many object parts as backgrounds, the prototypes just below a
    rejected one in suspicion order mostly backgrounds (docs/review-effort.md). numpy only: the
    review TUI calls this without importing torch.
    """
    import math

    import numpy as np

    P = len(vectors)
    if P < 2:
        return [[] for _ in range(P)]
    d = pair_distances(vectors)
    key = np.asarray(patch_ids(doc))
    same = key[:, None] == key[None, :]
    np.fill_diagonal(same, False)
    if radius is None:
        radius = radius_x * nn_median(d)
    d[d > radius] = np.inf
    if offered is not None:
        allowed = np.zeros(P, dtype=bool)
        allowed[np.asarray(list(offered), dtype=np.int64)] = True
        d[:, ~allowed] = np.inf
    if scores is not None:
        rank = np.empty(P, dtype=np.int32)  # rank in order(scores), without torch
        rank[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")] = np.arange(P, dtype=np.int32)
        below = rank[None, :] - rank[:, None]  # how far below prototype i (row) prototype j ranks
        d[(below < 0) | (below >= max(2, math.ceil(window * P)))] = np.inf  # the next one at least
    d[same] = -1.0  # same patch first, whatever its rank or distance
    kk = min(k, P - 1)
    # the kk smallest per row, then sorted by distance and id (a full sort of P x P took ~1 s at P = 2000)
    part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
    pd = np.take_along_axis(d, part, axis=1)
    o = np.lexsort((part, pd), axis=1)
    ni, nd = np.take_along_axis(part, o, axis=1), np.take_along_axis(pd, o, axis=1)
    return [[int(j) for j, dd in zip(ni[i], nd[i], strict=True) if dd < np.inf] for i in range(P)]


def current_weight(run, push_dir: Path, vectors: torch.Tensor, pcls: torch.Tensor) -> torch.Tensor:
    """Own-class last-layer weight per prototype: the run's current layer while it still holds this
    push's prototypes, else the layer saved with the push."""
    import torch
    from safetensors import safe_open

    def read(path: Path):
        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            return {k: fh.get_tensor(k) for k in ("prototypes", "last_layer.weight") if k in keys}

    w = None
    cur = run.weights_path
    if cur.exists():
        t = read(cur)
        if "prototypes" in t and t["prototypes"].shape == vectors.shape and torch.equal(t["prototypes"].float(), vectors):
            w = t.get("last_layer.weight")
    if w is None:
        w = read(push_dir / "model.safetensors").get("last_layer.weight")
    if w is None:
        return torch.zeros(len(vectors))
    return w.float()[pcls, torch.arange(len(vectors))]


def compute(run, push_dir: Path | None = None, cub=None, device=None, splits=None, names=DEFAULT) -> dict:
    """Scores, signals and look-alikes of a push (default: the latest); written to its suspicion.json."""
    import torch

    from protocli import antitypes as atmod
    from protocli.cache import latents
    from protocli.edge_colour import pushed_pictures
    from protocli.model import pushed_prototypes
    from protocli.runtime import pick_device

    device = device or pick_device("auto")
    push_dir = Path(push_dir) if push_dir is not None else run.require_push()
    cub = cub or run.cub()  # once: the latents and the pushed pictures both read it
    doc = read_json(push_dir / "prototypes.json", "push file")
    vectors = pushed_prototypes(push_dir)
    if len(doc["prototypes"]) != len(vectors):
        raise BadInput(f"{len(doc['prototypes'])} prototypes but {len(vectors)} vectors", push_dir / "prototypes.json")
    if splits is not None:
        ztr, ytr = splits[0], splits[1]
    else:
        model = run.load_model(device)
        ztr, ytr = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=device)
    pcls = torch.tensor([int(p["class"]) for p in doc["prototypes"]])
    with torch.no_grad():
        min_d, arg = grid_min(ztr.to(device), vectors.to(device))
    q = None
    if run.antitypes_path.exists():
        ants = atmod.load(run.antitypes_path, len(vectors), vectors.shape[1], run.pushes())
        # antitypes of earlier pushes only: this push's own rejects are what the score predicts
        q = [e["vector"] for e in ants.antitypes if e["push"] != push_dir.name]
        q = torch.tensor(q, dtype=torch.float32) if q else None
    sig = signals(min_d.cpu(), arg.cpu(), ytr.long(), pcls, current_weight(run, push_dir, vectors, pcls),
                  tuple(doc["grid"]), doc, vectors, q, pictures=pushed_pictures(run, doc, cub), device=device)
    # rounded once and used as stored: a mean of ranks has near-ties that float noise would order
    # one way here and rounding another in the TUI, which sorts by the stored scores
    s = [round(float(v), 5) for v in score(sig, names)]
    out = {"version": VERSION, "push": doc.get("push", push_dir.name), "signals_used": list(names),
           "offer_rule": OFFER_RULE, "score": s,
           "signals": {n: [round(float(v), 5) for v in t] for n, t in sig.items()},
           "look_alikes": look_alikes(vectors, doc, scores=s)}
    atomic_write_json(push_dir / FILE, out)
    return out


def load(push_dir: Path, num_prototypes: int) -> dict | None:
    """The push's suspicion.json when present and fitting, else None (a damaged file is ignored:
    it is a cache and is computed again)."""
    path = Path(push_dir) / FILE
    if not path.exists():
        return None
    try:
        doc = read_json(path, "suspicion file")
        ok = (isinstance(doc, dict) and doc.get("version") == VERSION
              and doc.get("signals_used") == list(DEFAULT)  # scored the way this code scores
              and doc.get("offer_rule") == OFFER_RULE  # and offering the way it offers
              and len(doc.get("score", ())) == num_prototypes == len(doc.get("look_alikes", ())))
        return doc if ok else None
    except BadInput:
        return None


def ensure(run_dir: Path, push_dir: Path, num_prototypes: int) -> dict:
    """suspicion.json of a push, computed (torch, latent cache) when missing."""
    from protocli.run import Run

    doc = load(push_dir, num_prototypes)
    if doc is not None:
        return doc
    return compute(Run.open(run_dir), push_dir)
