"""Nearest-patch search on cached latents: prototypes (P, D) + latent grids (N, D, H, W) -> patches.

- `nearest_patches`: each prototype's nearest own-class (image, cell), the projection target of a
  push; optionally avoiding the user's antitypes and giving every prototype its own patch
  (`distinct_choice`, a stable matching), or sharded over the processes of a torchrun job
  (`nearest_patches_sharded`, `merge_best`);
- `k_nearest_patches`: the k training images nearest to each prototype, any class (the nearest-patch
  lists of prototypes.json, and pruning).
All batched over images and prototypes; no (images x cells x prototypes) tensor is held at once.
"""

from __future__ import annotations

import torch


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

    Returns (best_dist (P,), best_image (P,), best_cell (P,) flat h*W+w). Ties keep the first image,
    as numpy's argmin does in the original code. With `dist` (a job of several processes) a plain search (no `avoid`, not
    `distinct`: the training push) shards the images: see `nearest_patches_sharded`.
    """
    if dist is not None and dist.on and avoid is None and not distinct:
        return nearest_patches_sharded(model, z, y, device, dist, batch_size)
    P = model.num_prototypes
    pcls = model.prototype_class.to(device)
    q = avoid.to(device, torch.float32) if avoid is not None and len(avoid) else None
    a = keep.to(device, torch.float32) if keep is not None and len(keep) else None
    k = pool if distinct else 1
    cand_d = torch.full((P, 0), float("inf"), device=device)
    cand_key = torch.zeros((P, 0), dtype=torch.long, device=device)
    HW = 1
    with torch.no_grad():
        for i in range(0, len(z), batch_size):
            zb, yb = z[i:i + batch_size].to(device).float(), y[i:i + batch_size].to(device)
            d = model.distances(zb).flatten(2)  # (B, P, HW)
            HW = d.shape[2]
            if q is not None:
                d = torch.where(_off_antitypes(d, zb, q, a, margin), d, torch.inf)
            d = torch.where((yb[:, None] == pcls[None, :])[:, :, None], d, torch.inf)
            bd, bk = _batch_candidates(d, k)
            cand_d, cand_key = _keep_nearest(cand_d, cand_key, bd, bk + i * HW, k)
    ar = torch.arange(P, device=device)
    choice = distinct_choice(cand_d, cand_key) if distinct else torch.zeros(P, dtype=torch.long, device=device)
    best_d, key = cand_d[ar, choice], cand_key[ar, choice]
    return best_d.cpu(), (key // HW).cpu(), (key % HW).cpu()


def _off_antitypes(d: torch.Tensor, zb: torch.Tensor, q: torch.Tensor, a: torch.Tensor | None,
                   margin: float) -> torch.Tensor:
    """The antitype rule of `nearest_patches` on one batch: (B, P, HW) bool, True where a cell may
    be prototype j's patch (nearer to p_j than to every antitype, or clearly nearer to an accepted
    vector than to any antitype)."""
    cells = zb.flatten(2).transpose(1, 2)  # (B, HW, D)
    dq = torch.cdist(cells, q[None].expand(len(zb), -1, -1)).square().amin(dim=2)  # (B, HW)
    ok = d < dq[:, None, :]
    if a is not None:
        da = torch.cdist(cells, a[None].expand(len(zb), -1, -1)).square().amin(dim=2)
        ok |= (da < margin * dq)[:, None, :]
    return ok


def _batch_candidates(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prototype's k nearest allowed cells of one batch (B, P, HW): distances and keys (P, k),
    key = image in the batch * HW + cell. min returns the first minimum, so k = 1 keeps the first
    cell, then the first image, on ties."""
    B, P, HW = d.shape
    if k == 1:
        m, c = d.min(dim=2)  # (B, P)
        bd, bi = m.min(dim=0)  # (P,)
        return bd[:, None], (bi * HW + c[bi, torch.arange(P, device=d.device)])[:, None]
    flat = d.permute(1, 0, 2).reshape(P, -1)  # (P, B*HW), image-major
    return torch.topk(flat, min(k, flat.shape[1]), dim=1, largest=False, sorted=True)


def _keep_nearest(cand_d: torch.Tensor, cand_key: torch.Tensor, bd: torch.Tensor, bk: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running pool (P, k) of each prototype's nearest candidates, merged with a batch's, ordered
    by (distance, key): earlier images win ties."""
    md, mk = torch.cat([cand_d, bd], 1), torch.cat([cand_key, bk], 1)
    o = torch.argsort(mk, dim=1)
    md, mk = md.gather(1, o), mk.gather(1, o)
    o = torch.argsort(md, dim=1, stable=True)
    return md.gather(1, o)[:, :k].contiguous(), mk.gather(1, o)[:, :k].contiguous()


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
    the smallest image index, then the smallest cell: exactly one process's first-found rule.
    """
    from protocli import distributed

    a, b = distributed.shard_range(len(z), dist, batch_size)
    if b > a:
        d, img, cell = nearest_patches(model, z[a:b], y[a:b], device, batch_size)
    else:  # fewer batches than ranks: nothing to search here
        P = model.num_prototypes
        d, img, cell = torch.full((P,), float("inf")), torch.zeros(P, dtype=torch.long), torch.zeros(P, dtype=torch.long)
    return merge_best(distributed.all_gather_tensor(d, dist), distributed.all_gather_tensor(img + a, dist),
                      distributed.all_gather_tensor(cell, dist))


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
