"""`protocli simulate`: run (latest push) + segmentation masks -> decisions in antitypes.json, by "simulated".

The simulated user stands in for a person so that revision can be measured. A prototype is
non-object when its patch does not touch the object, by one of two criteria (docs/fidelity.md):
- `box`: its 95th-percentile box has zero overlap with the object mask (the paper's text);
- `cell`: the raw 0/255 mask shrunk to the latent grid with PIL's default (bicubic) resize is
  exactly 0 at its cell (the authors' code, `cache.grid_masks`).
It rejects the non-object prototypes of the latest push, accepts the rest, and records each reject
with the pushed vector (the push stage's weights), so the vector joins the antitype set Q.

Decisions of an earlier push are first carried over where a prototype still sits on the same patch
(`antitypes.carry_onto`); those are not new decisions and do not count as clicks. A click is a new
reject: a person presses a key to reject and leaves the good prototypes alone, which is how the
paper's "about 350 clicks" (for about 200 + 77 + ... rejects) add up. `decisions` counts every new
verdict, accepts included.

With `order` (id or suspicion) and `look_alikes`, it also reports what a user following the review
TUI in that order, with or without its look-alike offers, spends to find the non-object prototypes
still undecided: `looked_90`, `looked_100` (prototypes looked at) and `keys` (effort.py). The
decisions saved are the same either way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protocli import antitypes as atmod
from protocli.errors import BadInput
from protocli.metrics import object_stats
from protocli.model import pushed_prototypes
from protocli.runfiles import read_push_doc

CRITERIA = ("box", "cell")
ORDERS = ("id", "suspicion")


def push_object_stats(run, cub, push_dir: Path | None = None) -> dict:
    """Per-prototype object statistics of a push (default: the latest): overlap, box/cell flags.

    Returns the push document too, so callers do not read it twice. Needs a dataset with masks.
    """
    from protocli.cache import grid_masks, masks

    push_dir = Path(push_dir) if push_dir is not None else run.require_push()
    if not cub.has_masks:
        raise BadInput(
            "the simulated user needs segmentation masks and this dataset has none "
            "(no segmentations/ folder); review the prototypes yourself: protocli review RUN",
            run.data_root,
        )
    doc = read_push_doc(push_dir)
    crop = bool(doc.get("crop", run.crop))
    m = masks(cub, "train", size=int(doc["img_size"]), crop=crop, cache_dir=run.cache_dir)
    g = grid_masks(cub, "train", grid=doc["grid"], crop=crop, cache_dir=run.cache_dir)
    stats = object_stats(doc, m, g)
    stats["doc"] = doc
    return stats


def summarize(stats: dict, active: torch.Tensor | None = None) -> dict:
    """Counts from `push_object_stats`: non-object under both criteria, overlap >= 0.75, mean overlap."""
    keep = torch.ones_like(stats["box"]) if active is None else active.bool()
    ov = stats["overlap"][keep]
    return {
        "non_object_box": int((stats["box"] & keep).sum()),
        "non_object_cell": int((stats["cell"] & keep).sum()),
        "overlap_ge_75": int((ov >= 0.75).sum()),
        "mean_overlap": round(float(ov.mean()), 4) if len(ov) else 0.0,
    }


def review_walk(run, push_dir: Path, vectors: torch.Tensor, flags: torch.Tensor, decided: set[int],
                order: str, look_alikes: bool, cub=None) -> dict:
    """The review effort of the undecided non-object prototypes in the TUI's `order`, with or without
    the TUI's look-alike offers (effort.walk); the order and offers come from the push's suspicion.json."""
    from protocli import suspicion
    from protocli.effort import walk

    P = len(vectors)
    sus = None
    if order == "suspicion" or look_alikes:
        sus = suspicion.load(push_dir, P) or suspicion.compute(run, push_dir, cub=cub)
    ids = suspicion.order(sus["score"]) if order == "suspicion" else list(range(P))
    w = walk(ids, flags.tolist(), sus["look_alikes"] if look_alikes else None, decided=decided)
    w.pop("rejected_ids")
    return {"order": order, "look_alikes": look_alikes, **w}


def _decide(ants: atmod.Antitypes, doc: dict, push: str, flags: torch.Tensor, current: dict[int, str],
            vectors: torch.Tensor) -> tuple[int, int]:
    """Record the simulated verdict (flagged: reject) of every prototype not already decided that way
    on `push` -> (new rejects, new accepts)."""
    new_rejects = new_accepts = 0
    # One bookkeeping step per prototype (JSON records); every number was computed batched before.
    for p in doc["prototypes"]:
        j = p["prototype"]
        verdict = "reject" if bool(flags[j]) else "accept"
        if current.get(j) == verdict:
            continue  # carried over from the previous push, or decided the same way before
        ants.decide(
            j,
            verdict,
            "simulated",
            push,
            vector=vectors[j].numpy() if verdict == "reject" else None,
            cls=p["class"],
            image=p["image"],
            box=p["box"],
        )
        new_rejects += verdict == "reject"
        new_accepts += verdict == "accept"
    return new_rejects, new_accepts


def simulate(run, criterion: str = "box", antitypes: Path | None = None, cub=None, order: str = "id",
             look_alikes: bool = False) -> dict:
    """Decide every prototype of the run's latest push with the simulated user; save antitypes.json.

    Also reports the review effort of a user who follows the TUI in `order` (id or suspicion),
    with or without look-alike offers: `looked_90`, `looked_100`, `keys` (see effort.py)."""
    if criterion not in CRITERIA:
        raise BadInput(f"--criterion {criterion}: expected box or cell")
    if order not in ORDERS:
        raise BadInput(f"--order {order}: expected id or suspicion")
    push_dir = run.require_push()
    cub = cub if cub is not None else run.cub()
    stats = push_object_stats(run, cub, push_dir)
    doc = stats["doc"]
    push = doc.get("push", push_dir.name)
    vectors = pushed_prototypes(push_dir)
    P, D = vectors.shape
    if len(doc["prototypes"]) != P:
        raise BadInput(f"{len(doc['prototypes'])} prototypes but {P} vectors", push_dir / "prototypes.json")
    ants, path = atmod.load_for_run(run, antitypes, P, D)
    if ants.push is not None and atmod.push_key(ants.push) > atmod.push_key(push):
        raise BadInput(
            f"antitypes file is on push {ants.push}, newer than the run's latest push {push}", path
        )

    carried = atmod.carry_onto(ants, run.path / "stages", doc, vectors.numpy())
    q_before = len(ants.antitypes)
    flags = stats[criterion]
    current = ants.decided(push)
    # Carried-over verdicts that still hold need no look; one the masks now disagree with is a new decision.
    settled = {j for j, v in current.items() if v == ("reject" if bool(flags[j]) else "accept")}
    effort = review_walk(run, push_dir, vectors, flags, settled, order, look_alikes, cub)
    new_rejects, new_accepts = _decide(ants, doc, push, flags, current, vectors)
    atmod.save(ants, path)
    rejected = ants.rejected(push)
    return {
        "run": str(run.path),
        "push": push,
        "criterion": criterion,
        "prototypes": P,
        "rejected": len(rejected),
        "accepted": len(ants.accepted(push)),
        **summarize(stats),
        "carried_over": len(carried),
        "carried_rejects": sum(v == "reject" for v in carried.values()),
        "decisions": new_rejects + new_accepts,
        "clicks": new_rejects,
        "antitypes": len(ants.antitypes),
        "antitypes_added": len(ants.antitypes) - q_before,
        "antitypes_file": str(path),
        "rejected_prototypes": rejected,
        **effort,
    }


def simulate_run(run_dir: Path, criterion: str = "box", antitypes: Path | None = None, order: str = "id",
                 look_alikes: bool = False) -> dict:
    """Open a run and let the simulated user decide its latest push (see `simulate`)."""
    from protocli.run import Run

    return simulate(Run.open(run_dir), criterion=criterion, antitypes=antitypes, order=order,
                    look_alikes=look_alikes)
