"""`protocli push`: run + cached training latents -> prototypes projected onto real patches.

Every prototype is replaced by the nearest latent vector among the (unaugmented) training images
of its own class. The stage folder gets `prototypes.json` (image, cell, projection distance = the
squared distance the prototype moved, the 95th-percentile box of its activation map before
projection as in the original (`box_map`), last-layer weight, duplicates, and
the k nearest training patches of any class to the pushed prototype, its own patch first at 0),
the weights after the push, and per prototype a patch crop, the full image with the box drawn and
the similarity heatmap. All distance work is batched over images and prototypes at once; pictures
are written by a thread pool.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from protocli.console import info, warn
from protocli.errors import BadInput
from protocli.files import atomic_write_bytes, atomic_write_json


def nearest_patches(model, z: torch.Tensor, y: torch.Tensor, device, batch_size: int = 64,
                    avoid: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                    margin: float = 0.5, distinct: bool = False, pool: int = 16, dist=None):
    """For every prototype: the nearest own-class cell over all images.

    `avoid` (S, D), the antitypes Q, and `keep` (A, D), the accepted prototype vectors: the user's
    verdicts label patches by their nearest neighbour. A cell is a candidate for prototype j only
    when it is nearer to p_j than to every antitype, or clearly nearer to an accepted vector: its
    squared distance to the nearest accepted vector is below `margin` times that to the nearest
    antitype. So no push lands on a rejected patch (distance 0 to its antitype) nor on one that
    looks more like a rejected patch than like anything accepted; an accepted prototype's own patch
    stays allowed. (p_j alone is not enough: revision can carry a rejected prototype off the data,
    where every patch is nearer to some antitype than to it. The margin, because the user's accepts
    include background patches near the object: with margin 1 a revised prototype kept landing on
    new border patches of background; docs/paper-regime.md.)

    `distinct`: no two prototypes on one (image, cell). Each prototype keeps its `pool` nearest
    candidates and `distinct_choice` matches prototypes to cells, the nearer prototype winning a
    contested cell; a prototype whose pool runs out keeps its nearest cell (a duplicate).

    Returns (best_dist (P,), best_image (P,), best_cell (P,) flat h*W+w, min_d (N, P), arg_cell (N, P)).
    min_d and arg_cell are the unrestricted minima. Ties keep the first image, as numpy's argmin does
    in the original code. With `dist` (a job of several processes) a plain search (no `avoid`, not
    `distinct`: the training push) shards the images: see `nearest_patches_sharded`.
    """
    if dist is not None and dist.on:
        return nearest_patches_sharded(model, z, y, device, dist, batch_size)
    P = model.num_prototypes
    pcls = model.prototype_class.to(device)
    if dist is not None and dist.on and avoid is None and not distinct:
        return nearest_patches_sharded(model, z, y, device, dist, batch_size)
    P = model.num_prototypes
    pcls = model.prototype_class.to(device)
    # Filled in place: appending small per-batch results between the big (B, P, H, W) temporaries
    # fragments the CPU heap, and the process grew by ~3.5 GB at CUB size (bench/RESULTS.md).
    all_min = torch.empty(len(z), P)
    all_arg = torch.empty(len(z), P, dtype=torch.int32)
    q = avoid.to(device, torch.float32) if avoid is not None and len(avoid) else None
    a = keep.to(device, torch.float32) if keep is not None and len(keep) else None
    k = pool if distinct else 1
    cand_d = torch.full((P, 0), float("inf"), device=device)
    cand_key = torch.zeros((P, 0), dtype=torch.long, device=device)
    ar = torch.arange(P, device=device)
    HW = 1
    with torch.no_grad():
        for i in range(0, len(z), batch_size):
            zb, yb = z[i:i + batch_size].to(device).float(), y[i:i + batch_size].to(device)
            d = model.distances(zb).flatten(2)  # (B, P, HW)
            HW = d.shape[2]
            mind, arg = d.min(dim=2)  # (B, P)
            all_min[i:i + len(zb)] = mind.cpu()
            all_arg[i:i + len(zb)] = arg.cpu()
            if q is not None:
                cells = zb.flatten(2).transpose(1, 2)  # (B, HW, D)
                dq = torch.cdist(cells, q[None].expand(len(zb), -1, -1)).square().amin(dim=2)  # (B, HW)
                ok = d < dq[:, None, :]
                if a is not None:
                    da = torch.cdist(cells, a[None].expand(len(zb), -1, -1)).square().amin(dim=2)
                    ok |= (da < margin * dq)[:, None, :]
                d = torch.where(ok, d, torch.inf)
            d = torch.where((yb[:, None] == pcls[None, :])[:, :, None], d, torch.inf)
            # Candidates of this batch; key = global image * HW + cell. min returns the first minimum,
            # so k = 1 keeps the first cell, then the first image, on ties.
            if k == 1:
                m, c = d.min(dim=2)  # (B, P)
                bd, bi = m.min(dim=0)  # (P,)
                bd, bk = bd[:, None], (bi * HW + c[bi, ar] + i * HW)[:, None]
            else:
                flat = d.permute(1, 0, 2).reshape(P, -1)  # (P, B*HW), image-major
                bd, bk = torch.topk(flat, min(k, flat.shape[1]), dim=1, largest=False, sorted=True)
                bk = bk + i * HW
            # Running pool ordered by (distance, key): earlier images win ties.
            md, mk = torch.cat([cand_d, bd], 1), torch.cat([cand_key, bk], 1)
            o = torch.argsort(mk, dim=1)
            md, mk = md.gather(1, o), mk.gather(1, o)
            o = torch.argsort(md, dim=1, stable=True)
            cand_d, cand_key = md.gather(1, o)[:, :k].contiguous(), mk.gather(1, o)[:, :k].contiguous()
    choice = distinct_choice(cand_d, cand_key) if distinct else torch.zeros(P, dtype=torch.long, device=device)
    best_d, key = cand_d[ar, choice], cand_key[ar, choice]
    return best_d.cpu(), (key // HW).cpu(), (key % HW).cpu(), all_min, all_arg


def distinct_choice(cand_d: torch.Tensor, cand_key: torch.Tensor) -> torch.Tensor:
    """Stable matching of prototypes to cells: (P, K) candidate distances (ascending) and keys -> the
    chosen column per prototype.

    Deferred acceptance, all prototypes at once: each proposes its next candidate; a cell keeps the
    nearest proposer (ties: the lower prototype index); the others move on. A prototype whose pool
    runs out (or whose next candidate is not allowed: inf) falls back to column 0 and stays out of
    the contest. Each iteration is a few tensor ops; there are at most P * K of them.
    """
    P, K = cand_d.shape
    ar = torch.arange(P, device=cand_d.device)
    choice = torch.zeros(P, dtype=torch.long, device=cand_d.device)
    for _ in range(P * K + 1):
        live = (choice < K) & torch.isfinite(cand_d[ar, choice.clamp(max=K - 1)])
        key = cand_key[ar, choice.clamp(max=K - 1)]
        d = cand_d[ar, choice.clamp(max=K - 1)]
        # Rank proposers by (distance, prototype index): the winner of a key has the smallest rank.
        rank = torch.empty(P, dtype=torch.long, device=d.device)
        rank[torch.argsort(torch.where(live, d, torch.inf), stable=True)] = ar
        big = torch.full_like(rank, P)
        _, inv = torch.unique(torch.where(live, key, -1), return_inverse=True)
        best = torch.full((int(inv.max()) + 1,), P, dtype=torch.long, device=d.device)
        best = best.scatter_reduce(0, inv, torch.where(live, rank, big), reduce="amin")
        lose = live & (best[inv] != rank)
        if not bool(lose.any()):
            break
        choice = torch.where(lose, choice + 1, choice)
    done = (choice < K) & torch.isfinite(cand_d[ar, choice.clamp(max=K - 1)])
    return torch.where(done, choice, torch.zeros_like(choice))


def k_nearest_patches(model, z: torch.Tensor, k: int, device, own=None, batch_size: int = 64):
    """The k training images whose closest cell is nearest to each prototype, any class (the original's
    nearest-patch analysis): (dist (k, P), image (k, P), cell (k, P) flat h*W+w), nearest first.

    `own` = (image (P,), cell (P,), valid (P,)) of the patch each prototype was pushed to: that patch
    equals the prototype, so its distance is set to exactly 0 (the matmul form leaves ~1e-7) and it
    ranks first, ahead of any other patch at distance 0. A running top-k keeps memory at O(k P).
    """
    P = model.num_prototypes
    top_d = torch.empty(0, P, device=device)
    top_i = torch.empty(0, P, dtype=torch.long, device=device)
    top_c = torch.empty(0, P, dtype=torch.long, device=device)
    if own is not None:
        own_img, own_cell, valid = (t.to(device) for t in own)
    with torch.no_grad():
        for i in range(0, len(z), batch_size):
            zb = z[i:i + batch_size].to(device).float()
            mind, arg = model.distances(zb).flatten(2).min(dim=2)  # (B, P)
            idx = torch.arange(i, i + len(zb), device=device)[:, None].expand_as(mind)
            if own is not None:
                hit = (idx == own_img[None, :]) & valid[None, :]
                mind = torch.where(hit, -1.0, mind)  # below every real distance: first in the ranking
                arg = torch.where(hit, own_cell[None, :], arg)
            d, n = torch.cat([top_d, mind]), torch.cat([top_i, idx])
            c = torch.cat([top_c, arg.long()])
            top_d, pick = torch.topk(d, min(k, len(d)), dim=0, largest=False, sorted=True)
            top_i, top_c = n.gather(0, pick), c.gather(0, pick)
    return top_d.clamp(min=0).cpu(), top_i.cpu(), top_c.cpu()


def nearest_patches_sharded(model, z: torch.Tensor, y: torch.Tensor, device, dist, batch_size: int = 64):
    """`nearest_patches` with the images split over the processes of `dist`; every rank gets the result.

    Each rank searches its shard (whole batches, so its distances are those of one process), then all
    gather every prototype's (distance, global image index, cell) and keep the smallest distance, then
    the smallest image index, then the smallest cell: exactly one process's first-found rule. The
    (N, P) minima and their cells are gathered in image order for the nearest-patch lists.
    """
    from protocli import distributed

    a, b = distributed.shard_range(len(z), dist, batch_size)
    if b > a:
        d, img, cell, min_d, arg = nearest_patches(model, z[a:b], y[a:b], device, batch_size)
    else:  # fewer batches than ranks: nothing to search here
        P = model.num_prototypes
        d, img, cell = torch.full((P,), float("inf")), torch.zeros(P, dtype=torch.long), torch.zeros(P, dtype=torch.long)
        min_d, arg = torch.empty(0, P), torch.empty(0, P, dtype=torch.int32)
    best = merge_best(distributed.all_gather_tensor(d, dist), distributed.all_gather_tensor(img + a, dist),
                      distributed.all_gather_tensor(cell, dist))
    return (*best, distributed.gather_rows(min_d, dist), distributed.gather_rows(arg, dist))


def merge_best(d: torch.Tensor, img: torch.Tensor, cell: torch.Tensor):
    """Shards' bests (S, P) each -> per prototype the smallest distance, then the smallest global image
    index, then the smallest cell: (best_d, best_image, best_cell), each (P,)."""
    big = torch.iinfo(torch.long).max
    best_d = d.min(0).values
    cand = d == best_d  # inf == inf: a prototype without own-class images ties everywhere
    img_min = torch.where(cand, img, big).min(0).values
    cand &= img == img_min
    cell_min = torch.where(cand, cell, big).min(0).values
    # No own-class image anywhere: one process reports image 0, cell 0; so does this.
    found = torch.isfinite(best_d)
    return best_d, torch.where(found, img_min, 0), torch.where(found, cell_min, 0)


def percentile_rows(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row percentile with linear interpolation (numpy's default), x (R, n)."""
    n = x.shape[1]
    pos = q / 100 * (n - 1)
    lo, frac = int(np.floor(pos)), pos - np.floor(pos)
    k = min(lo + 1, n - 1)
    v = torch.topk(x, n - lo, dim=1, largest=True).values  # top n-lo values, descending
    a, b = v[:, -1], v[:, -1 - (k - lo)] if k > lo else v[:, -1]
    return a + (b - a) * frac


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(R, H, W) -> (R, S, S) bicubic, as the original's cv2.resize(INTER_CUBIC)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def high_activation_boxes(sim_maps: torch.Tensor, size: int, q: float = 95.0, chunk: int = 128) -> torch.Tensor:
    """Box [x0, y0, x1, y1) around the pixels at or above the q-th percentile of the upsampled map."""
    out = []
    for i in range(0, len(sim_maps), chunk):
        up = upsample(sim_maps[i:i + chunk], size)
        thr = percentile_rows(up.flatten(1), q)
        m = up >= thr[:, None, None]
        rows, cols = m.any(dim=2), m.any(dim=1)  # (R, S)
        idx = torch.arange(size)
        y0 = torch.where(rows, idx, size).min(1).values
        y1 = torch.where(rows, idx, -1).max(1).values + 1
        x0 = torch.where(cols, idx, size).min(1).values
        x1 = torch.where(cols, idx, -1).max(1).values + 1
        out.append(torch.stack([x0, y0, x1, y1], dim=1))
    return torch.cat(out) if out else torch.empty(0, 4, dtype=torch.long)


def similarity_maps(model, z_sel: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Log-similarity maps of prototype r on latent grid r: z_sel (R, D, H, W), protos (R, D) -> (R, H, W)."""
    from protocli.model import log_similarity

    d = ((z_sel.float() - protos.float()[:, :, None, None]) ** 2).sum(1)
    return log_similarity(d)


def jet(v: np.ndarray) -> np.ndarray:
    """A jet-like colormap: values in [0, 1] (H, W) -> uint8 (H, W, 3)."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def draw_box(img: np.ndarray, box, color=(255, 230, 0), width: int = 2) -> np.ndarray:
    out = img.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    w = max(1, min(width, (x1 - x0) // 2, (y1 - y0) // 2))
    for t in range(w):
        out[y0 + t, x0:x1] = color
        out[y1 - 1 - t, x0:x1] = color
        out[y0:y1, x0 + t] = color
        out[y0:y1, x1 - 1 - t] = color
    return out


def load_input_images(cub, items, size: int, crop: bool) -> dict[int, np.ndarray]:
    """Unnormalised input-space pictures (S, S, 3) uint8 of the given train-split indices."""
    from protocli.data.transforms import eval_transform

    tf = eval_transform(size)
    split = cub.split("train")

    def one(i):
        return i, (tf(cub.image(split[i], crop=crop)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    with ThreadPoolExecutor(max_workers=4) as ex:
        return dict(ex.map(one, items))


def cell_box(cell_h: int, cell_w: int, grid, size: int, margin: int = 1) -> list[int]:
    """Pixel box of a latent cell, widened by `margin` cells (used for the nearest-patch crops)."""
    H, W = grid
    return [max(0, round((cell_w - margin) * size / W)), max(0, round((cell_h - margin) * size / H)),
            min(size, round((cell_w + 1 + margin) * size / W)), min(size, round((cell_h + 1 + margin) * size / H))]


BOX_MAPS = ("before", "after")


def push_model(run, model, cub, z: torch.Tensor, y: torch.Tensor, device, k: int = 5,
               box_map: str = "before", avoid: torch.Tensor | None = None, keep: torch.Tensor | None = None,
               margin: float = 0.5, distinct: bool = False, dist=None) -> dict:
    """The push stage on cached latents `z` of the train split. Commits a NNN-push stage.

    `box_map` picks the activation map behind each prototype's box and heatmap, both on the image it
    is pushed to: "before" is the map of the prototype vector before projection (the original
    ProtoPNet's push), "after" the map of the projected vector (which peaks at the pushed cell).
    With `dist` (default: the current job) the search is sharded and every rank ends with the same
    prototypes; rank 0 alone writes the stage.
    """
    from protocli import distributed

    dist = dist or distributed.current()
    if box_map not in BOX_MAPS:
        raise BadInput(f"--box-map {box_map}: expected before or after")
    t0 = time.perf_counter()
    size, crop = model.cfg.img_size, run.crop
    H, W = z.shape[2], z.shape[3]
    best_d, best_img, best_cell, _, _ = nearest_patches(model, z, y, device, avoid=avoid, keep=keep, margin=margin,
                                                        distinct=distinct, dist=dist)
    found = torch.isfinite(best_d)
    if not bool(found.all()):
        missing = sorted({int(c) for c in model.prototype_class[~found]})
        why = "no training image, or none off the antitypes," if avoid is not None else "no training image"
        warn(f"{int((~found).sum())} prototypes of classes {missing[:10]} found {why}: they keep their vectors")
    h, w = best_cell // W, best_cell % W
    new = z[best_img, :, h, w].float()  # (P, D) the cached latent vectors themselves
    with torch.no_grad():
        old = model.prototypes.detach().cpu().clone()
        model.prototypes.copy_(torch.where(found[:, None], new, old).to(model.prototypes.device))
    maps = similarity_maps(model, z[best_img], old if box_map == "before" else model.prototypes.detach().cpu())
    boxes = high_activation_boxes(maps, size)

    # Duplicates: several prototypes on the same (image, cell).
    key = best_img * (H * W) + best_cell
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(key), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(key)), reduce="amin")
    dup_of = first[inverse]

    kk = min(k, len(z))
    near_d, near_i, near_cell = k_nearest_patches(model, z, kk, device, own=(best_img, best_cell, found))

    train_items = cub.split("train")
    weights = model.last_layer.weight.detach().cpu()
    pcls = model.prototype_class.cpu()
    protos = []
    for j in range(model.num_prototypes):  # bookkeeping only: the numeric work above is batched
        c, img = int(pcls[j]), int(best_img[j])
        protos.append({
            "prototype": j, "class": c, "class_name": cub.classes[c], "image": train_items[img].name,
            "image_index": img, "cell": [int(h[j]), int(w[j])],
            "projection_distance": float(best_d[j]) if bool(found[j]) else None,  # none found: JSON has no inf
            "box": [int(v) for v in boxes[j]], "weight": float(weights[c, j]),
            "duplicate_of": int(dup_of[j]) if int(dup_of[j]) != j else None,
            "nearest": [{"image": train_items[int(near_i[r, j])].name, "image_index": int(near_i[r, j]),
                         "class": int(y[near_i[r, j]]), "distance": float(near_d[r, j]),
                         "cell": [int(near_cell[r, j]) // W, int(near_cell[r, j]) % W],
                         "box": cell_box(int(near_cell[r, j]) // W, int(near_cell[r, j]) % W, (H, W), size)}
                        for r in range(kk)],
        })
    unique = int((dup_of == torch.arange(len(dup_of))).sum())
    n_pics = 0
    with distributed.stage(run, "push", dist) as st:
        if st.main:  # the other ranks hold the same prototypes and wait at the stage's end
            doc = {"version": 1, "push": st.id, "img_size": size, "grid": [H, W], "crop": crop, "box_map": box_map,
                   "classes": list(cub.classes), "prototypes": protos}
            atomic_write_json(st.dir / "prototypes.json", doc)
            n_pics = write_pictures(st.dir, protos, maps, cub, size, crop)
            st.save_model(model)
        st.info.update(prototypes=model.num_prototypes, unique=unique, box_map=box_map,
                       mean_distance=float(best_d[found].mean()))
        push_id = st.id
    if unique < model.num_prototypes:
        warn(f"{model.num_prototypes - unique} prototypes share a patch with another prototype")
    secs = round(time.perf_counter() - t0, 2)
    info(f"push {push_id}: {model.num_prototypes} prototypes, {unique} unique, {n_pics} pictures in {secs}s")
    return {"run": str(run.path), "push": push_id, "prototypes": model.num_prototypes, "unique": unique,
            "duplicates": model.num_prototypes - unique, "mean_distance": float(best_d[found].mean()),
            "seconds": secs}


def write_pictures(folder: Path, protos: list[dict], maps: torch.Tensor, cub, size: int, crop: bool) -> int:
    """Patch crop, full image with box, heatmap overlay, nearest-patch crops; in a thread pool."""
    needed = {p["image_index"] for p in protos} | {n["image_index"] for p in protos for n in p["nearest"]}
    imgs = load_input_images(cub, sorted(needed), size, crop)
    up = torch.cat([upsample(maps[i:i + 256], size) for i in range(0, len(maps), 256)]).numpy()
    for sub in ("patches", "images", "heatmaps", "nearest"):
        (folder / sub).mkdir(exist_ok=True)

    def one(p):
        j = p["prototype"]
        img = imgs[p["image_index"]]
        x0, y0, x1, y1 = p["box"]
        atomic_write_bytes(folder / "patches" / f"{j:04d}.png", _png(img[y0:y1, x0:x1]))
        atomic_write_bytes(folder / "images" / f"{j:04d}.png", _png(draw_box(img, p["box"])))
        m = up[j]
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        heat = (0.5 * img + 0.5 * jet(m)).clip(0, 255).astype(np.uint8)
        atomic_write_bytes(folder / "heatmaps" / f"{j:04d}.png", _png(draw_box(heat, p["box"])))
        for r, n in enumerate(p["nearest"]):
            a, b, c, d = n["box"]
            atomic_write_bytes(folder / "nearest" / f"{j:04d}_{r + 1}.png", _png(imgs[n["image_index"]][b:d, a:c]))
        return 3 + len(p["nearest"])

    with ThreadPoolExecutor(max_workers=4) as ex:
        return sum(ex.map(one, protos))


def push_run(run_dir: Path, device, box_map: str = "before", dist=None) -> dict:
    """Open a run, push its prototypes on the cached train latents and commit a push stage."""
    from protocli.cache import latents
    from protocli.run import Run

    if box_map not in BOX_MAPS:  # before any work
        raise BadInput(f"--box-map {box_map}: expected before or after")
    run = Run.open(run_dir)
    model = run.load_model(device)
    cub = run.cub()
    z, y = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=device, dist=dist)
    return push_model(run, model, cub, z, y, device, box_map=box_map, dist=dist)
