"""Where protocli claims to follow a reference, the reference's formula computed here independently.

- `cell` criterion (the authors' simulated user): the raw 0/255 object mask - cropped like its image,
  at the image's own resolution - shrunk to the latent grid by PIL's default `Image.resize` (for a
  grey mask: antialiased bicubic, Keys a = -0.5, 22-bit fixed point, horizontal pass then vertical,
  each rounded and clipped to 0..255); a cell is non-object when its value is exactly 0. The resize is
  written out by hand below (`pil_bicubic_by_hand`) and must agree with `cache.grid_masks` bit for bit.
- push boxes (the original ProtoPNet): by default from the activation map of the prototype vector
  *before* projection, on the image it is projected to; `--box-map after` uses the projected vector.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from protocli.cache import grid_masks
from protocli.metrics import object_stats

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _coeffs(in_size: int, out_size: int) -> list[tuple[int, list[int]]]:
    """Per output pixel: first input pixel and integer weights, as Pillow's precompute/normalize."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)  # shrinking widens the kernel (antialiasing)
    support = 2.0 * fscale
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = [_bicubic((x + xmin - center + 0.5) / fscale) for x in range(xmax - xmin)]
        total = sum(w)
        w = [v / total for v in w] if total != 0 else w
        k = [int(v * (1 << PRECISION_BITS) + (0.5 if v >= 0 else -0.5)) for v in w]
        out.append((xmin, k))
    return out


def _pass(a: np.ndarray, out_size: int) -> np.ndarray:
    """Resample the rows of `a` (R, n) to (R, out_size), rounded and clipped to uint8."""
    res = np.empty((a.shape[0], out_size), dtype=np.uint8)
    for xx, (xmin, k) in enumerate(_coeffs(a.shape[1], out_size)):
        acc = (1 << (PRECISION_BITS - 1)) + a[:, xmin:xmin + len(k)].astype(np.int64) @ np.array(k, dtype=np.int64)
        res[:, xx] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return res


def pil_bicubic_by_hand(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Pillow's default resize of a mode-"L" image, (h, w) uint8 -> (out_h, out_w) uint8."""
    tmp = _pass(mask, out_w) if mask.shape[1] != out_w else mask
    return _pass(tmp.T, out_h).T if mask.shape[0] != out_h else tmp


class _MaskSet:
    """A stand-in dataset: `split`, `mask` (mode "L", 0/255) and `fingerprint`, as `Cub` has."""

    def __init__(self, arrays):
        self.arrays = arrays

    def split(self, name):
        return [SimpleNamespace(i=i) for i in range(len(self.arrays))]

    def mask(self, item, crop=True):
        return Image.fromarray(self.arrays[item.i])

    def fingerprint(self):
        return "test"


def _random_masks(rng) -> list[np.ndarray]:
    out = []
    for h, w in [(37, 23), (50, 50), (224, 224), (300, 211), (5, 9)]:
        m = np.zeros((h, w), dtype=np.uint8)
        for _ in range(3):  # a few rectangles of object
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0:y0 + rng.integers(1, h // 2 + 2), x0:x0 + rng.integers(1, w // 2 + 2)] = 255
        out.append(m)
    lone = np.zeros((224, 224), dtype=np.uint8)
    lone[100, 100] = 255  # one object pixel: area > 0 in its cell, but rounds to 0 in the authors' test
    out.append(lone)
    return out


def test_grid_masks_are_pils_default_bicubic_resize_by_hand(tmp_path):
    masks = _random_masks(np.random.default_rng(0))
    for grid in [(7, 7), (4, 4), (3, 5)]:
        got = grid_masks(_MaskSet(masks), "train", grid=grid, crop=True, cache_dir=tmp_path).numpy()
        for i, m in enumerate(masks):
            want = pil_bicubic_by_hand(m, *grid)
            assert np.array_equal(got[i], want), (grid, m.shape)
            assert np.array_equal(want, np.asarray(Image.fromarray(m).resize(grid[::-1])))  # PIL's default
    again = grid_masks(_MaskSet(masks), "train", grid=(3, 5), crop=True, cache_dir=tmp_path)  # from the cache
    assert np.array_equal(again.numpy(), got)
    lone = got[-1]
    assert lone.max() == 0  # one pixel in 32x32: 255 / 1024 of the weight rounds to 0 -> non-object


def test_cell_criterion_is_value_exactly_zero():
    masks = _random_masks(np.random.default_rng(1))[:4]
    g = torch.stack([torch.from_numpy(pil_bicubic_by_hand(m, 7, 7)) for m in masks])
    cells = [[0, 0], [3, 3], [6, 2], [1, 5]]
    # a cell of value 1 (of 255) counts as object, as `<= 0.0` on value / 255 does in the authors' code
    g[0, 0, 0] = 1
    g[1, 3, 3] = 0
    doc = {"grid": [7, 7], "prototypes": [
        {"image_index": i, "box": [0, 0, 1, 1], "cell": c} for i, c in enumerate(cells)]}
    st = object_stats(doc, torch.zeros(4, 8, 8, dtype=torch.bool), g)
    want = [int(g[i, c[0], c[1]]) / 255 <= 0.0 for i, c in enumerate(cells)]
    assert st["cell"].tolist() == want
    assert st["cell"][1] and not st["cell"][0]
    assert torch.allclose(st["cell_fraction"], torch.tensor([g[i, c[0], c[1]] / 255 for i, c in enumerate(cells)]))


def test_cell_criterion_on_the_dataset_masks(tiny_data, tmp_path):
    """The real path: `Cub.mask` (cropped, 0/255) straight to the grid, at the images' own size."""
    from protocli.data.cub import open_cub

    cub = open_cub(tiny_data)
    got = grid_masks(cub, "train", grid=(4, 4), crop=True, cache_dir=None).numpy()
    for i, item in enumerate(cub.split("train")):
        m = np.asarray(cub.mask(item, crop=True))
        assert set(np.unique(m)) <= {0, 255}
        assert np.array_equal(got[i], pil_bicubic_by_hand(m, 4, 4))


def _brute_log_sim(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """z (D, H, W), p (D,) -> log((d + 1) / (d + 1e-4)) with d the squared L2 distance per cell."""
    d = ((z.double() - p.double()[:, None, None]) ** 2).sum(0)
    return torch.log((d + 1) / (d + 1e-4))


def _brute_box(sim: torch.Tensor, size: int) -> list[int]:
    """The original's box: bicubic upsample, pixels >= the 95th percentile, their bounding box."""
    from protocli.activation_maps import upsample  # cv2 INTER_CUBIC equivalent, checked in test_push_math

    up = upsample(sim[None].float(), size)[0].numpy()
    ys, xs = np.nonzero(up >= np.percentile(up, 95))
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("box_map", ["before", "after"])
def test_push_box_comes_from_the_map_before_projection(tiny_run, box_map):
    from protocli.cache import latents
    from protocli.push import push_model
    from protocli.run import Run

    cpu = torch.device("cpu")
    run = Run.open(tiny_run)
    model = run.load_model(cpu)
    with torch.no_grad():  # move the prototypes off their patches, as training does between pushes
        model.prototypes.add_(0.3 * torch.randn(model.prototypes.shape, generator=torch.Generator().manual_seed(0)))
        model.prototypes.clamp_(0, 1)
    old = model.prototypes.detach().clone()
    cub = run.cub()
    z, y = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=cpu)
    res = push_model(run, model, cub, z, y, cpu, box_map=box_map)
    from protocli.files import read_json

    doc = read_json(run.path / "stages" / res["push"] / "prototypes.json")
    assert doc["box_map"] == box_map
    size, differ = model.cfg.img_size, 0
    for p in doc["prototypes"]:
        j, (h, w) = p["prototype"], p["cell"]
        zi = z[p["image_index"]].float()
        assert torch.equal(model.prototypes[j].detach(), zi[:, h, w])  # projected onto that very patch
        before, after = (_brute_box(_brute_log_sim(zi, v), size) for v in (old[j], zi[:, h, w]))
        assert p["box"] == (before if box_map == "before" else after)
        differ += before != after
    assert differ > 0  # the two maps give different boxes here, so the test tells them apart
    with pytest.raises(Exception, match="box-map"):
        push_model(run, model, cub, z, y, cpu, box_map="sideways")


def test_pil_default_resize_filter_is_bicubic_for_grey_images():
    """The authors call `resize` without a filter; Pillow >= 7 then uses BICUBIC for mode "L"/"RGB"."""
    m = (np.random.default_rng(2).random((40, 31)) > 0.7).astype(np.uint8) * 255
    img = Image.fromarray(m)
    assert np.array_equal(np.asarray(img.resize((7, 7))), np.asarray(img.resize((7, 7), Image.Resampling.BICUBIC)))
    assert not np.array_equal(np.asarray(img.resize((7, 7))), np.asarray(img.resize((7, 7), Image.Resampling.BILINEAR)))
    assert math.isclose(_bicubic(0.0), 1.0) and _bicubic(2.0) == 0.0


def test_k_nearest_patches_brute_force():
    """Per prototype, the k images whose closest cell is nearest (any class), as the original's analysis."""
    from protocli.model import ModelConfig, build_model
    from protocli.nearest import k_nearest_patches

    torch.manual_seed(3)
    model = build_model(ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=5, img_size=32))
    z = torch.rand(11, 5, 3, 4)
    d, img, cell = k_nearest_patches(model, z, 4, torch.device("cpu"), batch_size=3)
    p = model.prototypes.detach()
    full = ((z[:, None] - p[None, :, :, None, None]) ** 2).sum(2).flatten(2)  # (N, P, HW) brute force
    per_image = full.min(2).values  # (N, P)
    for j in range(model.num_prototypes):
        order = sorted(range(11), key=lambda b: float(per_image[b, j]))[:4]
        assert img[:, j].tolist() == order
        assert torch.allclose(d[:, j], per_image[order, j], atol=1e-5)
        assert cell[:, j].tolist() == [int(full[b, j].argmin()) for b in order]


def test_nearest_after_push_starts_with_the_own_patch_at_zero(tiny_run):
    from protocli.cache import latents
    from protocli.files import read_json
    from protocli.model import pushed_prototypes as pushed_vectors
    from protocli.push import push_run
    from protocli.run import Run

    res = push_run(tiny_run, torch.device("cpu"))
    run = Run.open(tiny_run)
    doc = read_json(run.path / "stages" / res["push"] / "prototypes.json")
    z, _ = latents(run.load_model("cpu"), run.cub(), "train", crop=run.crop, cache_dir=run.cache_dir,
                   device=torch.device("cpu"))
    pushed = pushed_vectors(run.path / "stages" / res["push"])
    for p in doc["prototypes"]:
        assert "projection_distance" in p and "distance" not in p
        first = p["nearest"][0]
        assert (first["image_index"], first["cell"], first["distance"]) == (p["image_index"], p["cell"], 0.0)
        # every listed distance is that of the pushed vector, ascending
        dd = [((z[n["image_index"]].float() - pushed[p["prototype"]][:, None, None]) ** 2).sum(0).min().item()
              for n in p["nearest"]]
        assert np.allclose([n["distance"] for n in p["nearest"]][1:], dd[1:], atol=1e-4)
        assert all(a <= b + 1e-6 for a, b in zip(dd, dd[1:], strict=False))


def _brute_apr(model, z, y, masks, active) -> float | None:
    """One (image, prototype) pair at a time: top 5% of the bicubic map, share inside the object."""
    import torch.nn.functional as F

    vals = []
    for b in range(len(z)):
        for j in range(model.num_prototypes):
            if int(model.prototype_class[j]) != int(y[b]) or not active[j]:
                continue
            sim = _brute_log_sim(z[b], model.prototypes[j].detach())
            up = F.interpolate(sim[None, None].float(), size=masks.shape[-2:], mode="bicubic",
                               align_corners=False)[0, 0].numpy()
            top = up >= np.percentile(up, 95)
            vals.append((top & masks[b].numpy()).sum() / top.sum())
    return float(np.mean(vals)) if vals else None


def test_activation_precision_brute_force_and_masking():
    from protocli.evaluate import activation_precision
    from protocli.model import ModelConfig, build_model

    torch.manual_seed(4)
    model = build_model(ModelConfig(backbone="tiny", num_classes=3, prototypes_per_class=2, proto_dim=5, img_size=16))
    z, y = torch.rand(7, 5, 3, 3), torch.tensor([0, 1, 2, 0, 1, 2, 1])
    masks = torch.rand(7, 16, 16) > 0.6
    cpu = torch.device("cpu")
    all_on = activation_precision(model, z, y, masks, cpu, batch_size=3)
    assert all_on == pytest.approx(_brute_apr(model, z, y, masks, [True] * 6), abs=1e-6)
    with torch.no_grad():
        model.prototype_mask[[0, 3, 4]] = 0
    masked = activation_precision(model, z, y, masks, cpu, batch_size=3)
    want = _brute_apr(model, z, y, masks, [j not in (0, 3, 4) for j in range(6)])
    assert masked == pytest.approx(want, abs=1e-6) and masked != pytest.approx(all_on, abs=1e-6)
    with torch.no_grad():
        model.prototype_mask.zero_()
    assert activation_precision(model, z, y, masks, cpu) is None


def test_cache_latents_are_fp32_then_fp16_even_under_autocast(tiny_data):
    """The cache encodes in fp32 (an outer bf16 autocast must not leak in) and stores fp16: the error
    per entry is fp16 rounding only, at most 2^-12 for values in [0, 1]."""
    from protocli.cache import latents
    from protocli.data.cub import ImageSet, open_cub
    from protocli.data.transforms import eval_transform
    from protocli.model import ModelConfig, build_model

    torch.manual_seed(5)
    model = build_model(ModelConfig(backbone="tiny", num_classes=4, prototypes_per_class=2, proto_dim=16,
                                    img_size=32)).eval()
    cub, cpu = open_cub(tiny_data), torch.device("cpu")
    x = torch.stack([ImageSet(cub, "train", eval_transform(32), crop=True)[i][0] for i in range(8)])
    with torch.no_grad():
        exact = model.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.encode(x).float()
    assert float((bf16 - exact).abs().max()) > 2 ** -12  # what autocast would cost: the test can tell
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, _ = latents(model, cub, "train", crop=True, cache_dir=None, device=cpu, workers=0)
    assert z.dtype == torch.float16
    err = (z[:8].float() - exact).abs()
    assert 0 < float(err.max()) <= 2 ** -12


def _cv2_inter_cubic_by_hand(m: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's resize(INTER_CUBIC) of a float map, written out: source x = (dx + 0.5) * scale - 0.5,
    Keys kernel with A = -0.75 on the 4 taps floor(x) - 1 .. floor(x) + 2, indices clamped (replicate);
    rows first, then columns (separable, so the order does not matter in exact arithmetic)."""
    A = -0.75

    def weights(n_in):
        out = np.zeros((size, n_in))
        for d in range(size):
            x = (d + 0.5) * n_in / size - 0.5
            s = math.floor(x)
            t = x - s
            c0 = ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A
            c1 = ((A + 2) * t - (A + 3)) * t * t + 1
            c2 = ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1
            for tap, c in zip(range(s - 1, s + 3), (c0, c1, c2, 1 - c0 - c1 - c2), strict=True):
                out[d, min(max(tap, 0), n_in - 1)] += c
        return out

    return weights(m.shape[0]) @ m.astype(np.float64) @ weights(m.shape[1]).T


def test_box_upsampling_is_cv2_inter_cubic():
    """The original upsamples the activation map with cv2.resize(INTER_CUBIC) before the percentile box."""
    from protocli.activation_maps import upsample

    maps = torch.rand(4, 7, 7, generator=torch.Generator().manual_seed(6)) * 9
    ours = upsample(maps, 224).numpy()
    for r in range(4):
        assert np.allclose(ours[r], _cv2_inter_cubic_by_hand(maps[r].numpy(), 224), atol=2e-5)
