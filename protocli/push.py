"""`protocli push`: run + cached training latents -> prototypes projected onto real patches.

Every prototype is replaced by the nearest latent vector among the (unaugmented) training images
of its own class. The stage folder gets `prototypes.json` (image, cell, distance, the
95th-percentile box, last-layer weight, duplicates, the k nearest training patches of any class),
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
from protocli.files import atomic_write_bytes, atomic_write_json


def nearest_patches(model, z: torch.Tensor, y: torch.Tensor, device, batch_size: int = 64, dist=None):
    """For every prototype: the nearest own-class cell over all images.

    Returns (best_dist (P,), best_image (P,), best_cell (P,) flat h*W+w, min_d (N, P), arg_cell (N, P)).
    Ties keep the first image, as numpy's argmin does in the original code. With `dist` (a job of
    several processes) the images are sharded: see `nearest_patches_sharded`.
    """
    if dist is not None and dist.on:
        return nearest_patches_sharded(model, z, y, device, dist, batch_size)
    P = model.num_prototypes
    pcls = model.prototype_class.to(device)
    best_d = torch.full((P,), float("inf"), device=device)
    best_img = torch.zeros(P, dtype=torch.long, device=device)
    best_cell = torch.zeros(P, dtype=torch.long, device=device)
    # Filled in place: appending small per-batch results between the big (B, P, H, W) temporaries
    # fragments the CPU heap, and the process grew by ~3.5 GB at CUB size (bench/RESULTS.md).
    all_min = torch.empty(len(z), P)
    all_arg = torch.empty(len(z), P, dtype=torch.int32)
    ar = torch.arange(P, device=device)
    with torch.no_grad():
        for i in range(0, len(z), batch_size):
            zb, yb = z[i:i + batch_size].to(device).float(), y[i:i + batch_size].to(device)
            mind, arg = model.distances(zb).flatten(2).min(dim=2)  # (B, P)
            all_min[i:i + batch_size] = mind
            all_arg[i:i + batch_size] = arg
            own = yb[:, None] == pcls[None, :]
            bmin, bidx = torch.where(own, mind, torch.inf).min(dim=0)  # (P,)
            better = bmin < best_d
            best_d = torch.where(better, bmin, best_d)
            best_img = torch.where(better, bidx + i, best_img)
            best_cell = torch.where(better, arg[bidx, ar], best_cell)
    return best_d.cpu(), best_img.cpu(), best_cell.cpu(), all_min, all_arg


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


def push_model(run, model, cub, z: torch.Tensor, y: torch.Tensor, device, k: int = 5, dist=None) -> dict:
    """The push stage on cached latents `z` of the train split. Commits a NNN-push stage.

    With `dist` (default: the current job) the search is sharded and every rank ends with the same
    prototypes; rank 0 alone writes the stage."""
    from protocli import distributed

    dist = dist or distributed.current()
    t0 = time.perf_counter()
    size, crop = model.cfg.img_size, run.crop
    H, W = z.shape[2], z.shape[3]
    best_d, best_img, best_cell, min_d, arg = nearest_patches(model, z, y, device, dist=dist)
    found = torch.isfinite(best_d)
    if not bool(found.all()):
        missing = sorted({int(c) for c in model.prototype_class[~found]})
        warn(f"no training image for classes {missing[:10]}: their prototypes keep their vectors")
    h, w = best_cell // W, best_cell % W
    new = z[best_img, :, h, w].float()  # (P, D) the cached latent vectors themselves
    with torch.no_grad():
        old = model.prototypes.detach().cpu()
        model.prototypes.copy_(torch.where(found[:, None], new, old).to(model.prototypes.device))
    maps = similarity_maps(model, z[best_img], model.prototypes.detach().cpu())
    boxes = high_activation_boxes(maps, size)

    # Duplicates: several prototypes on the same (image, cell).
    key = best_img * (H * W) + best_cell
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(key), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(key)), reduce="amin")
    dup_of = first[inverse]

    kk = min(k, len(z))
    near_d, near_i = torch.topk(min_d, kk, dim=0, largest=False)  # (k, P)
    near_cell = arg.gather(0, near_i.to(torch.int64)).long()

    train_items = cub.split("train")
    weights = model.last_layer.weight.detach().cpu()
    pcls = model.prototype_class.cpu()
    protos = []
    for j in range(model.num_prototypes):  # bookkeeping only: the numeric work above is batched
        c, img = int(pcls[j]), int(best_img[j])
        protos.append({
            "prototype": j, "class": c, "class_name": cub.classes[c], "image": train_items[img].name,
            "image_index": img, "cell": [int(h[j]), int(w[j])], "distance": float(best_d[j]),
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
            doc = {"version": 1, "push": st.id, "img_size": size, "grid": [H, W], "crop": crop,
                   "classes": list(cub.classes), "prototypes": protos}
            atomic_write_json(st.dir / "prototypes.json", doc)
            n_pics = write_pictures(st.dir, protos, maps, cub, size, crop)
            st.save_model(model)
        st.info.update(prototypes=model.num_prototypes, unique=unique, mean_distance=float(best_d[found].mean()))
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


def push_run(run_dir: Path, device, dist=None) -> dict:
    """Open a run, push its prototypes on the cached train latents and commit a push stage."""
    from protocli.cache import latents
    from protocli.run import Run

    run = Run.open(run_dir)
    model = run.load_model(device)
    cub = run.cub()
    z, y = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=device, dist=dist)
    return push_model(run, model, cub, z, y, device, dist=dist)
