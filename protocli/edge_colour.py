"""Edge colour: pushed images + their prototypes' boxes -> how unlike the image's edge each box is.

A suspicion signal (protocli/suspicion.py) that looks at pixels, not latents. The edge of an image
cropped to its object's box is mostly background, so a box whose every colour is also found on the
edge looks like background, and a box that holds even a few pixels of the object does not: the
object's colours are rare on the edge. That is what the location signal `box_gap` cannot see: a
strip along the border that grazes an object reaching the border is as far from the centre as one
that does not (docs/review-effort.md: the near misses, and why the latents could not tell them).

Inputs: train index -> (S, S, 3) uint8 input-space pictures (`pushed_pictures`) and prototypes.json.
Output: (P,) minus the largest, over the box's pixels, RGB distance to the EDGE_K-th nearest edge
pixel outside the box (higher = more like background = more suspicious).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The edge is a ring EDGE_RING x the side wide; a box pixel's distance is to its EDGE_K-th nearest edge
# pixel outside the box (a few object pixels on the edge do not make the object's colour "background");
# pictures larger than EDGE_SIDE are shrunk to it first (cost). Chosen on the birds, confirmed on the
# flowers (docs/review-effort.md).
EDGE_RING, EDGE_K, EDGE_SIDE = 1 / 12, 5, 96


def pushed_pictures(run, doc: dict, cub=None) -> dict:
    """The pushed images of a push document in input space: train index -> (S, S, 3) uint8."""
    from protocli.console import check_cancel
    from protocli.pictures import load_input_images

    cub = cub or run.cub()
    idx = sorted({int(p["image_index"]) for p in doc["prototypes"]})
    out: dict = {}
    for i in range(0, len(idx), 256):  # in chunks, so that closing the review does not wait for 2000 JPEGs
        check_cancel()
        out.update(load_input_images(cub, idx[i:i + 256], int(doc["img_size"]), bool(doc.get("crop", run.crop))))
    return out


def edge_colour(pictures: dict, doc: dict, k: int = EDGE_K, ring: float = EDGE_RING, side: int = EDGE_SIDE,
                device=None) -> torch.Tensor:
    """Minus how unlike the image's edge the most unusual pixel of each prototype's box is (P,).

    pictures: train index -> (S, S, 3) uint8 input-space image (pictures.load_input_images); the boxes
    are prototypes.json's. For every pixel in the box: the RGB distance (0..1 per channel) to its
    k-th nearest pixel of the image's edge (a ring `ring` x the side wide) outside the box; the
    box's value is the largest. The edge of a cropped image is mostly background, so a box whose
    every colour is also on the edge looks like background, and a box that holds a few pixels of
    the object (the near misses of `box_gap`: a border strip that grazes the object) does not.
    A box that covers the whole edge gets the largest distance (it holds the object). `device`: where
    to compute (the result is on the CPU)."""
    import numpy as np
    import torch
    from PIL import Image

    from protocli.console import check_cancel

    protos = doc["prototypes"]
    S = int(doc["img_size"])
    w = min(S, side)
    small = {}
    for i in {int(p["image_index"]) for p in protos}:  # each pushed image once, shrunk to w
        img = pictures[i]
        if w != S:
            img = np.asarray(Image.fromarray(img).resize((w, w), Image.Resampling.BILINEAR))
        small[i] = torch.from_numpy(np.array(img)).to(device).float().div_(255)
    edge = edge_ring(w, ring, device)
    out = torch.empty(len(protos))
    # One prototype at a time: boxes differ in size, and each step is a (box x edge) distance search
    # (up to about 1e6 pairs), so the loop itself costs nothing next to it.
    for j, p in enumerate(protos):
        check_cancel()
        x0, y0, x1, y1 = (int(v) for v in p["box"])
        x0, y0 = x0 * w // S, y0 * w // S
        x1, y1 = max(x0 + 1, -(-x1 * w // S)), max(y0 + 1, -(-y1 * w // S))
        box, ref = box_and_edge(small[int(p["image_index"])], (x0, y0, x1, y1), edge)
        out[j] = -(WHOLE_EDGE if len(ref) == 0 else _max_kth(box, ref, min(k, len(ref))).sqrt())
    return out


WHOLE_EDGE = 3 ** 0.5  # a box that covers the whole edge holds the object: the largest RGB distance


def edge_ring(w: int, ring: float = EDGE_RING, device=None) -> torch.Tensor:
    """bool (w, w): the ring `ring` x the side wide (at least a pixel) along a w-px picture's border."""
    import torch

    r = max(1, round(ring * w))
    edge = torch.ones(w, w, dtype=torch.bool, device=device)
    edge[r:w - r, r:w - r] = False
    return edge


def box_and_edge(img: torch.Tensor, box, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels (n, 3) of `box` (x0, y0, x1, y1) in img (w, w, 3), and those of `edge` outside it."""
    import torch

    x0, y0, x1, y1 = box
    inside = torch.zeros_like(edge)
    inside[y0:y1, x0:x1] = True
    return img[y0:y1, x0:x1].reshape(-1, 3), img[edge & ~inside]


def _kth_sq(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """k-th smallest squared distance from each row of a (n, 3) to the rows of b (m, 3): (n,)."""
    import torch

    # |a - b|^2 = |a|^2 + (|b|^2 - 2 a.b): the bracket, one fused matmul, ranks each row the same way
    part = torch.addmm(b.square().sum(1)[None], a, b.T, alpha=-2)
    return (part.topk(k, dim=1, largest=False).values[:, -1] + a.square().sum(1)).clamp_min(0)


def _max_kth(box: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """max over the rows of box of `_kth_sq(box, ref, k)`, exactly, mostly without the full matrix.

    The k-th nearest among every 8th row of ref is an upper bound of the k-th nearest among all,
    so rows are done exactly in order of that bound, and the rest skipped once the bound cannot beat
    the best so far. On a background box every bound is small; on an object box the first exact
    rows are large: either way a chunk or two of the box is done in full (2.7x faster on the birds'
    pictures at 224 px, the same result; no faster on noise, where every pixel is an outlier)."""
    if len(ref) < 32 * k or len(box) <= chunk:
        return _kth_sq(box, ref, k).max()
    bound = _kth_sq(box, ref[::8], k)
    best = bound.new_zeros(())
    for idx in bound.argsort(descending=True).split(chunk):
        if bound[idx[0]] <= best:
            break
        best = best.maximum(_kth_sq(box[idx], ref, k).max())
    return best
