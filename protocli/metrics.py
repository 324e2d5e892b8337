"""Numbers shared by several stages: accuracy from min distances, object overlap of a push.

Inputs: a model and cached min distances or latents; a push document with the training masks.
Outputs: accuracies (floats) and per-prototype overlap / non-object flags (tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from protocli.cache import min_distances


def accuracy_from_min_d(model, min_d: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model.classify(min_d.to(model.prototypes.device))
        return float((logits.argmax(1).cpu() == y).float().mean()) if len(y) else 0.0


def accuracies_on_cache(model, test: tuple, train: tuple, device) -> tuple[float, float]:
    """Accuracy on cached latents: `test` and `train` are (z, y) pairs -> (test accuracy, train accuracy)."""
    return tuple(accuracy_from_min_d(model, min_distances(model, z, device), y) for z, y in (test, train))


def box_overlap(boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of each box [x0, y0, x1, y1) covered by its mask: boxes (R, 4), masks (R, S, S) bool."""
    m = F.pad(masks.float().cumsum(1).cumsum(2), (1, 0, 1, 0))  # integral image (R, S+1, S+1)
    r = torch.arange(len(boxes))
    x0, y0, x1, y1 = boxes.long().unbind(1)
    inside = m[r, y1, x1] - m[r, y0, x1] - m[r, y1, x0] + m[r, y0, x0]
    area = ((x1 - x0) * (y1 - y0)).clamp(min=1).float()
    return inside / area


def cell_values(grid_masks: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Grid-mask value (0..255) at each prototype's cell: grid_masks (R, H, W), cells (R, 2) -> (R,)."""
    r = torch.arange(len(cells))
    return grid_masks[r, cells[:, 0], cells[:, 1]]


def object_stats(doc: dict, train_masks: torch.Tensor, train_grid_masks: torch.Tensor) -> dict:
    """Per-prototype overlap and non-object flags for a push document (prototypes.json).

    train_masks: bool (N, S, S) in input space (box overlap); train_grid_masks: uint8 (N, H, W) from
    `cache.grid_masks` (cell criterion; "cell_fraction" is its value / 255, the authors' number)."""
    protos = doc["prototypes"]
    idx = torch.tensor([p["image_index"] for p in protos], dtype=torch.long)
    boxes = torch.tensor([p["box"] for p in protos], dtype=torch.long)
    cells = torch.tensor([p["cell"] for p in protos], dtype=torch.long)
    overlap = box_overlap(boxes, train_masks[idx])
    value = cell_values(train_grid_masks[idx], cells)
    return {"overlap": overlap, "cell_fraction": value.float() / 255, "box": overlap <= 0, "cell": value == 0}
