"""RGB PIL image -> model input tensor (3, S, S) in [0, 1]; mask PIL image -> (1, S, S) in {0, 1}.

- `train_transform(size)`: ProtoPNet's offline Augmentor set (img_aug.py), done on the fly. Each
  call picks one of three operations uniformly - rotate by an integer angle in [-15, 15] and keep the
  largest inscribed rectangle; perspective skew of magnitude 0.2; shear by an integer angle in
  [-10, 10] along x or y and keep the largest full rectangle - then flips horizontally with p = 0.5
  and resizes to (S, S). The original wrote 10 copies per operation per image (30 in all, equal
  shares), so a uniform choice per draw has the same distribution. The geometry runs at the image's
  own resolution, then one antialiased resize, as the original did.
- `eval_transform(size)`: resize to (S, S) (aspect ratio not kept, as ProtoPNet) and to tensor.
- `mask_transform(size)`: the same resize with nearest sampling, so the mask stays pixel-aligned with
  `eval_transform`'s output (PIL maps pixel centres identically for every filter).

No normalisation here: the model normalises (ARCHITECTURE.md). All randomness comes from torch's
global RNG, so `torch.manual_seed` and DataLoader worker seeding control it. The transforms are
small picklable classes with `size`, `augments` and a `repr` that names them (a stable cache key).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

BICUBIC = Image.Resampling.BICUBIC


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's RNG."""
    return int(torch.randint(low, high + 1, ()).item())


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def inscribed_size(w: float, h: float, angle: float) -> tuple[float, float]:
    """Largest axis-aligned rectangle inside a w x h rectangle rotated by `angle` radians."""
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    if sin_a < 1e-12:
        return w, h
    long_side, short_side = max(w, h), min(w, h)
    if short_side <= 2 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        # Thin rectangle: the inscribed one touches both long sides (two corners on them).
        x = 0.5 * short_side
        return (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    cos_2a = cos_a * cos_a - sin_a * sin_a
    return (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a


def _affine_crop(img: Image.Image, out_w: float, out_h: float, matrix: tuple[float, float, float, float]):
    """Output rectangle (out_w x out_h) centred on the input's centre, sampled through a linear map.

    `matrix` (a, b, d, e) maps output offsets from the centre to input offsets; PIL's AFFINE data
    maps output pixel coordinates to input ones, so the translation centres both rectangles.
    """
    ow, oh = int(out_w), int(out_h)
    if ow < 2 or oh < 2:  # a degenerate image (a few pixels wide): leave it as it is
        return img
    a, b, d, e = matrix
    cx, cy, ux, uy = img.width / 2, img.height / 2, ow / 2, oh / 2
    data = (a, b, cx - a * ux - b * uy, d, e, cy - d * ux - e * uy)
    return img.transform((ow, oh), Image.Transform.AFFINE, data, BICUBIC)


def rotate(img: Image.Image, degrees: int) -> Image.Image:
    """Rotate and keep the largest inscribed rectangle (no black corners), as Augmentor's rotate."""
    t = math.radians(degrees)
    w, h = inscribed_size(img.width, img.height, t)
    c, s = math.cos(t), math.sin(t)
    return _affine_crop(img, w, h, (c, s, -s, c))


def shear(img: Image.Image, degrees: int, axis: str) -> Image.Image:
    """Shear along x or y and keep the largest rectangle fully inside the sheared image."""
    phi = math.tan(math.radians(degrees))
    if axis == "x":
        return _affine_crop(img, img.width - abs(phi) * img.height, img.height, (1.0, phi, 0.0, 1.0))
    return _affine_crop(img, img.width, img.height - abs(phi) * img.width, (1.0, 0.0, phi, 1.0))


# Augmentor's Skew("RANDOM") moves corners outward: (corner, dx, dy) per direction, in units of the
# skew amount. Corners: 0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left.
_TILTS = (((0, 0, -1), (3, 0, 1)), ((1, 0, -1), (2, 0, 1)),     # left, right
          ((0, -1, 0), (1, 1, 0)), ((2, 1, 0), (3, -1, 0)))     # forward, backward
_CORNERS = (((0, -1, 0),), ((0, 0, -1),), ((1, 1, 0),), ((1, 0, -1),),
            ((2, 1, 0),), ((2, 0, 1),), ((3, -1, 0),), ((3, 0, 1),))


def skew(img: Image.Image, moves, amount: int) -> Image.Image:
    """Perspective warp that maps the image corners to corners moved outward by `amount` px."""
    w, h = img.width - 1, img.height - 1
    start = [[0, 0], [w, 0], [w, h], [0, h]]
    end = [list(p) for p in start]
    for corner, dx, dy in moves:
        end[corner][0] += dx * amount
        end[corner][1] += dy * amount
    return F.perspective(img, start, end, interpolation=F.InterpolationMode.BICUBIC)


def random_skew(img: Image.Image, magnitude: float = 0.2) -> Image.Image:
    """Augmentor's Skew(RANDOM): tilt (any side), tilt left/right, tilt top/bottom or one corner."""
    amount = _randint(1, max(1, math.ceil(max(img.size) * magnitude)))
    kind = _randint(0, 3)
    if kind == 3:
        moves = _CORNERS[_randint(0, 7)]
    else:
        moves = _TILTS[_randint(*((0, 3), (0, 1), (2, 3))[kind])]
    return skew(img, moves, amount)


class TrainTransform:
    augments = True

    def __init__(self, size: int):
        self.size = int(size)

    def __repr__(self) -> str:
        return f"train_transform({self.size})"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img if img.mode == "RGB" else img.convert("RGB")
        op = _randint(0, 2) if min(img.size) >= 4 else -1  # a few pixels: no room for geometry
        if op == 0:
            img = rotate(img, _randint(-15, 15))
        elif op == 1:
            img = random_skew(img, 0.2)
        elif op == 2:
            degrees = _randint(-10, 10)
            img = shear(img, degrees, "x" if _randint(0, 1) == 0 else "y")
        if _randint(0, 1):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(img.resize((self.size, self.size), Image.Resampling.BILINEAR))


class EvalTransform:
    augments = False

    def __init__(self, size: int):
        self.size = int(size)

    def __repr__(self) -> str:
        return f"eval_transform({self.size})"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        # Bilinear PIL resize (antialiased when shrinking) = torchvision's Resize on PIL images.
        img = img if img.mode == "RGB" else img.convert("RGB")
        return _to_tensor(img.resize((self.size, self.size), Image.Resampling.BILINEAR))


class MaskTransform:
    augments = False

    def __init__(self, size: int):
        self.size = int(size)

    def __repr__(self) -> str:
        return f"mask_transform({self.size})"

    def __call__(self, mask: Image.Image) -> torch.Tensor:
        m = np.array(mask.convert("L").resize((self.size, self.size), Image.Resampling.NEAREST))
        return torch.from_numpy(m >= 128).float().unsqueeze(0)


def train_transform(size: int) -> TrainTransform:
    return TrainTransform(size)


def eval_transform(size: int) -> EvalTransform:
    return EvalTransform(size)


def mask_transform(size: int) -> MaskTransform:
    return MaskTransform(size)
