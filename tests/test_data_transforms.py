"""Train / eval / mask transforms: shapes, ranges, no black borders, torch-RNG determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from protocli.data import transforms as T


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("w, h", [(96, 96), (30, 120), (200, 40), (7, 5), (3, 3), (1, 1)])
def test_train_transform_shape_and_range(w, h):
    torch.manual_seed(0)
    t = T.train_transform(48)
    for _ in range(30):  # enough draws to hit every operation and both flips
        x = t(noise_image(w, h))
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0


def test_train_transform_follows_torch_seed():
    img, t = noise_image(60, 40), T.train_transform(32)
    torch.manual_seed(3)
    a = [t(img) for _ in range(5)]
    torch.manual_seed(3)
    b = [t(img) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(a[0], x) for x in a[1:])


def test_geometry_keeps_no_empty_border():
    """Rotate / shear crop to the largest full rectangle and skew moves corners outward, so a white
    image stays white: no black fill may leak in."""
    white = Image.new("RGB", (70, 45), (255, 255, 255))
    outs = [T.rotate(white, a) for a in (-15, -7, 1, 15)]
    outs += [T.shear(white, a, axis) for a in (-10, 4, 10) for axis in "xy"]
    outs += [T.skew(white, moves, 14) for moves in T._TILTS + T._CORNERS]
    for out in outs:
        assert np.asarray(out).min() >= 250, out.size


def test_rotate_and_shear_crop_sizes():
    img = noise_image(80, 50)
    assert T.rotate(img, 0).size == (80, 50)
    w, h = T.rotate(img, 15).size
    assert w < 80 and h < 50 and w * h > 0.5 * 80 * 50
    assert T.shear(img, 10, "x").size == (int(80 - math.tan(math.radians(10)) * 50), 50)
    assert T.shear(img, -10, "y").size == (80, int(50 - math.tan(math.radians(10)) * 80))
    assert T.inscribed_size(100, 100, 0.0) == (100, 100)
    small = T.inscribed_size(100, 100, math.radians(45))
    assert small[0] == pytest.approx(100 / math.sqrt(2)) and small[1] == pytest.approx(100 / math.sqrt(2))


def test_all_three_operations_are_drawn(monkeypatch):
    calls = {"rotate": 0, "skew": 0, "shear": 0}
    for name in calls:
        real = getattr(T, name if name != "skew" else "random_skew")

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(T, name if name != "skew" else "random_skew", spy)
    torch.manual_seed(0)
    t, img = T.train_transform(16), noise_image(40, 30)
    for _ in range(300):
        t(img)
    assert all(60 < n < 140 for n in calls.values()), calls


def test_horizontal_flip_half_the_time():
    img = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 0], [0, 0, 0]]] * 3, np.uint8))  # red left column
    torch.manual_seed(1)
    t = T.train_transform(3)  # 3 px: no room for geometry, only the flip
    left = [t(img)[0, 0, 0].item() == 1.0 for _ in range(200)]
    assert 60 < sum(left) < 140


def test_eval_and_mask_transforms():
    x = T.eval_transform(24)(noise_image(50, 30))
    assert x.shape == (3, 24, 24) and 0 <= x.min() and x.max() <= 1
    mask = Image.fromarray(np.where(np.arange(50)[None, :] < 20, 255, 0).repeat(30, 0).astype(np.uint8))
    m = T.mask_transform(25)(mask)
    assert m.shape == (1, 25, 25) and set(m.unique().tolist()) == {0.0, 1.0}
    assert m[0, :, :10].eq(1).all() and m[0, :, 10:].eq(0).all()
    assert repr(T.eval_transform(24)) == "eval_transform(24)" and T.train_transform(8).augments
