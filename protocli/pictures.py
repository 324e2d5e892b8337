"""Small picture helpers: training images in input space, a jet colormap, a box drawn on an image,
PNG bytes.

Inputs: uint8 images (H, W, 3) as numpy arrays (or, for `load_input_images`, a dataset and indices).
Outputs: new arrays, or PNG bytes (no timestamp).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image


def load_input_images(cub, items, size: int, crop: bool) -> dict[int, np.ndarray]:
    """Unnormalised input-space pictures (S, S, 3) uint8 of the given train-split indices."""
    from protocli.data.transforms import eval_transform

    tf = eval_transform(size)
    split = cub.split("train")

    def one(i):
        return i, (tf(cub.image(split[i], crop=crop)).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    with ThreadPoolExecutor(max_workers=4) as ex:
        return dict(ex.map(one, items))


def jet(v: np.ndarray) -> np.ndarray:
    """A jet-like colormap: values in [0, 1] (H, W) -> uint8 (H, W, 3)."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def png(arr: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of a uint8 array; PIL writes no timestamp chunk, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
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
