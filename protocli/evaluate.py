"""`protocli evaluate`: run -> accuracy, prototype counts and object statistics. Never changes the run.

Object statistics (datasets with masks) refer to the latest push:
- overlap of a prototype = fraction of its 95th-percentile box covered by the object mask of its
  push image; `box` criterion: non-object when the overlap is 0 (the paper's text);
- `cell` criterion (the authors' code, exactly): the raw 0/255 mask of the push image, shrunk to
  the latent grid by PIL's default resize (bicubic, `cache.grid_masks`), is exactly 0 at the
  prototype's cell;
- activation precision (binary form): over test images and the active (unmasked) prototypes of
  their class, the fraction of the top 5% of the bicubically upsampled similarity map that lies
  inside the object.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protocli.activation_maps import percentile_rows, upsample
from protocli.console import warn
from protocli.metrics import accuracy_from_min_d, object_stats


def activation_precision(model, z: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, device,
                         batch_size: int = 16, dist=None) -> float | None:
    """Mean over (test image, active own-class prototype) of the share of the top-5% pixels inside the
    object. Masked prototypes (prototype_mask 0) take no part; None when every prototype is masked.

    With `dist` (several processes) each rank takes a shard of whole batches; the per-batch sums are
    gathered in order and added as one process adds them, so the result is the same to the bit."""
    from protocli import distributed

    dist = dist or distributed.SINGLE
    a, b = distributed.shard_range(len(z), dist, batch_size)
    sums = _apr_batch_sums(model, z[a:b], y[a:b], masks[a:b], device, batch_size)
    sums = distributed.gather_rows(sums, dist)
    total, count = 0.0, 0
    for s, c in sums.tolist():
        total += s
        count += int(c)
    return total / count if count else None


def _apr_batch_sums(model, z: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, device,
                    batch_size: int) -> torch.Tensor:
    """Per batch: (sum of the top-5% object shares, number of (image, active prototype) pairs),
    float64 (batches, 2)."""

    ppc = model.cfg.prototypes_per_class
    size = masks.shape[-1]
    active = (model.prototype_mask.detach() > 0).to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(z), batch_size):
            zb, yb = z[i:i + batch_size].to(device).float(), y[i:i + batch_size].to(device)
            B = len(yb)
            sim = model.similarity_map(zb)  # (B, P, H, W)
            own = (yb[:, None] * ppc + torch.arange(ppc, device=device)[None, :])  # (B, ppc) prototype ids
            keep = active[own].flatten().cpu()  # (B*ppc,)
            maps = sim[torch.arange(B, device=device)[:, None], own].flatten(0, 1).cpu()[keep]  # (R, H, W)
            if len(maps) == 0:
                continue
            up = upsample(maps, size)
            top = up >= percentile_rows(up.flatten(1), 95.0)[:, None, None]
            mb = masks[i:i + B].repeat_interleave(ppc, dim=0)[keep]
            out.append((float(((top & mb).flatten(1).sum(1) / top.flatten(1).sum(1).clamp(min=1)).sum()), len(maps)))
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 2)


def evaluate_model(run, model, cub, device, criterion: str = "box", apr: bool = True, dist=None) -> dict:
    """All metrics of `model` on the run's data (cached latents). Does not modify anything.

    With `dist` (several processes) the distance and activation-precision work is sharded."""
    from protocli import distributed
    from protocli.cache import grid_masks, masks, min_distances, run_latents

    dist = dist or distributed.SINGLE
    crop = run.crop
    model.eval()
    out: dict = {"run": str(run.path)}
    ztr, ytr, zte, yte = run_latents(run, model, cub, device, dist=dist)

    def min_d(z):  # shards of 256 rows: the batches min_distances uses, so the same numbers
        return distributed.map_rows(lambda a, b: min_distances(model, z[a:b], device), len(z), dist, 256)

    md_te = min_d(zte)
    out["accuracy"] = accuracy_from_min_d(model, md_te, yte)
    out["train_accuracy"] = accuracy_from_min_d(model, min_d(ztr), ytr)
    with torch.no_grad():
        pred = model.classify(md_te.to(device)).argmax(1).cpu()
    K = len(cub.classes)
    hits = torch.bincount(yte[pred == yte], minlength=K).float()
    n = torch.bincount(yte, minlength=K).float()
    out["per_class_accuracy"] = {cub.classes[c]: (float(hits[c] / n[c]) if n[c] else None) for c in range(K)}
    out["prototypes"] = model.num_prototypes
    out["active_prototypes"] = int((model.prototype_mask > 0).sum())
    push = run.latest_push()
    out["push"] = push.name if push else None
    if push is None:
        warn("no push yet: object statistics need one (`protocli push RUN`)")
        return out
    if not cub.has_masks:
        warn("dataset has no segmentation masks: object statistics skipped")
        return out
    from protocli.runfiles import push_is_current, read_push_doc

    doc = read_push_doc(push)
    if not push_is_current(model.state_dict(), push):
        warn(f"prototypes moved since push {push.name}: object statistics describe that push")
    size = model.cfg.img_size
    mtr = masks(cub, "train", size=size, crop=crop, cache_dir=run.cache_dir)
    gtr = grid_masks(cub, "train", grid=doc["grid"], crop=bool(doc.get("crop", crop)), cache_dir=run.cache_dir)
    st = object_stats(doc, mtr, gtr)
    active = model.prototype_mask.detach().cpu() > 0
    out["criterion"] = criterion
    out["non_object_box"] = int((st["box"] & active).sum())
    out["non_object_cell"] = int((st["cell"] & active).sum())
    out["non_object"] = out[f"non_object_{criterion}"]
    out["overlap_ge_75"] = int(((st["overlap"] >= 0.75) & active).sum())
    out["mean_overlap"] = float(st["overlap"][active].mean()) if bool(active.any()) else 0.0
    if apr:
        mte = masks(cub, "test", size=size, crop=crop, cache_dir=run.cache_dir)
        out["activation_precision"] = activation_precision(model, zte, yte, mte, device, dist=dist)
    out["overlap"] = [round(float(v), 4) for v in st["overlap"]]
    out["non_object_prototypes"] = [int(j) for j in torch.nonzero(st[criterion] & active).flatten()]
    return out


def evaluate_run(run_dir: Path, criterion: str = "box", device=None, apr: bool = True, dist=None) -> dict:
    from protocli.run import Run

    device = device or torch.device("cpu")
    run = Run.open(run_dir)
    model = run.load_model(device)
    return evaluate_model(run, model, run.cub(), device, criterion=criterion, apr=apr, dist=dist)
