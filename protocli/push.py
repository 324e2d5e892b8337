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

from protocli.activation_maps import high_activation_boxes, similarity_maps, upsample
from protocli.console import info, warn
from protocli.errors import BadInput
from protocli.files import atomic_write_bytes, atomic_write_json
from protocli.nearest import k_nearest_patches, nearest_patches
from protocli.pictures import draw_box, jet, load_input_images, png
from protocli.runfiles import push_is_current, read_push_doc


def cell_box(cell_h: int, cell_w: int, grid, size: int, margin: int = 1) -> list[int]:
    """Pixel box of a latent cell, widened by `margin` cells (used for the nearest-patch crops)."""
    H, W = grid
    return [max(0, round((cell_w - margin) * size / W)), max(0, round((cell_h - margin) * size / H)),
            min(size, round((cell_w + 1 + margin) * size / W)), min(size, round((cell_h + 1 + margin) * size / H))]


def duplicate_of(key: torch.Tensor) -> torch.Tensor:
    """Several prototypes on the same (image, cell) key: each one's first prototype with that key (P,)."""
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(key), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(key)), reduce="amin")
    return first[inverse]


def _project(model, z: torch.Tensor, best_img: torch.Tensor, best_cell: torch.Tensor,
             found: torch.Tensor) -> torch.Tensor:
    """Replace every prototype that found a patch by that patch's cached latent vector (the projection);
    returns the vectors before (P, D), on the CPU."""
    W = z.shape[3]
    new = z[best_img, :, best_cell // W, best_cell % W].float()  # (P, D) the cached latent vectors themselves
    with torch.no_grad():
        old = model.prototypes.detach().cpu().clone()
        model.prototypes.copy_(torch.where(found[:, None], new, old).to(model.prototypes.device))
    return old


def _records(model, cub, y, best, boxes, dup_of, nearest, grid, size: int) -> list[dict]:
    """The prototypes.json record of every prototype: where it was pushed (`best` = distance, image,
    flat cell, found), its box, weight, duplicate, and its `nearest` = (distance, image, cell) (k, P)."""
    best_d, best_img, best_cell, found = best
    near_d, near_i, near_cell = nearest
    H, W = grid
    train_items = cub.split("train")
    weights = model.last_layer.weight.detach().cpu()
    pcls = model.prototype_class.cpu()
    protos = []
    for j in range(model.num_prototypes):  # bookkeeping only: the numeric work is batched before
        c, img = int(pcls[j]), int(best_img[j])
        protos.append({
            "prototype": j, "class": c, "class_name": cub.classes[c], "image": train_items[img].name,
            "image_index": img, "cell": [int(best_cell[j]) // W, int(best_cell[j]) % W],
            "projection_distance": float(best_d[j]) if bool(found[j]) else None,  # none found: JSON has no inf
            "box": [int(v) for v in boxes[j]], "weight": float(weights[c, j]),
            "duplicate_of": int(dup_of[j]) if int(dup_of[j]) != j else None,
            "nearest": [{"image": train_items[int(near_i[r, j])].name, "image_index": int(near_i[r, j]),
                         "class": int(y[near_i[r, j]]), "distance": float(near_d[r, j]),
                         "cell": [int(near_cell[r, j]) // W, int(near_cell[r, j]) % W],
                         "box": cell_box(int(near_cell[r, j]) // W, int(near_cell[r, j]) % W, (H, W), size)}
                        for r in range(len(near_d))],
        })
    return protos


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
    best_d, best_img, best_cell = nearest_patches(model, z, y, device, avoid=avoid, keep=keep, margin=margin,
                                                  distinct=distinct, dist=dist)
    found = torch.isfinite(best_d)
    if not bool(found.all()):
        missing = sorted({int(c) for c in model.prototype_class[~found]})
        why = "no training image, or none off the antitypes," if avoid is not None else "no training image"
        warn(f"{int((~found).sum())} prototypes of classes {missing[:10]} found {why}: they keep their vectors")
    old = _project(model, z, best_img, best_cell, found)
    maps = similarity_maps(model, z[best_img], old if box_map == "before" else model.prototypes.detach().cpu())
    dup_of = duplicate_of(best_img * (H * W) + best_cell)
    kk = min(k, len(z))
    nearest = k_nearest_patches(model, z, kk, device, own=(best_img, best_cell, found))
    protos = _records(model, cub, y, (best_d, best_img, best_cell, found), high_activation_boxes(maps, size),
                      dup_of, nearest, (H, W), size)
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
        atomic_write_bytes(folder / "patches" / f"{j:04d}.png", png(img[y0:y1, x0:x1]))
        atomic_write_bytes(folder / "images" / f"{j:04d}.png", png(draw_box(img, p["box"])))
        m = up[j]
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        heat = (0.5 * img + 0.5 * jet(m)).clip(0, 255).astype(np.uint8)
        atomic_write_bytes(folder / "heatmaps" / f"{j:04d}.png", png(draw_box(heat, p["box"])))
        for r, n in enumerate(p["nearest"]):
            a, b, c, d = n["box"]
            atomic_write_bytes(folder / "nearest" / f"{j:04d}_{r + 1}.png", png(imgs[n["image_index"]][b:d, a:c]))
        return 3 + len(p["nearest"])

    with ThreadPoolExecutor(max_workers=4) as ex:
        return sum(ex.map(one, protos))


def ensure_push(run, model, cub, ztr, ytr, device, box_map: str = "before") -> Path:
    """The latest push if it is current and drew its boxes from `box_map`, else a new push stage.

    A training push draws its boxes from the prototypes before projection; revision wants the boxes
    of the prototypes as they are (see ReviseConfig.box_map), so rounds (and the demo) push again: the
    patches stay, the boxes are those of the pushed vectors."""
    latest = run.latest_push()
    if push_is_current(model.state_dict(), latest):  # a push now would repeat it
        if read_push_doc(latest).get("box_map", "before") == box_map:
            return latest
    push_model(run, model, cub, ztr, ytr, device, box_map=box_map)
    return run.latest_push()


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
