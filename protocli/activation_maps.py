"""Similarity maps of prototypes on latent grids, upsampled to input size, and their boxes.

Inputs: latent grids and prototype vectors (torch). Outputs: log-similarity maps (R, H, W), bicubic
upsampled maps (R, S, S), per-row percentiles and the original's 95th-percentile boxes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protocli.model import log_similarity


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
    d = ((z_sel.float() - protos.float()[:, :, None, None]) ** 2).sum(1)
    return log_similarity(d)
