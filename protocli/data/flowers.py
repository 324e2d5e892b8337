"""The `flowers` family of `protocli data synth`: a class row + background spec -> one drawn image.

A second synthetic world, built only to confirm defaults chosen on the birds (`--family flowers`):
other objects, other backgrounds, other object sizes. A flower is a stem with leaves, a ring of
petals and a centre, outlined in near-black; a class is a combination of petal colour x petal shape
x centre pattern (x leaves for many classes), each value shared by several classes, so no single
part names the class. Flowers are smaller than the birds (about a third of the image side against
about half), and the backgrounds are other textures (clouds, bands, mosaic, grass, bricks, scales,
plaid, drift) in other shades. The writer (`synth.py`) is shared with the birds: masks, loose boxes,
the confound and determinism work the same way.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from protocli.errors import BadInput

ATTRIBUTES = (("petals", ("pink", "violet", "white")), ("shape", ("round", "narrow", "pointed")),
              ("centre", ("solid", "dotted", "ringed")), ("leaves", ("one", "two", "none")))
PETAL = {"pink": (240, 120, 170), "violet": (140, 80, 210), "white": (246, 246, 250)}
CENTRE, CENTRE_DARK = (250, 200, 40), (110, 60, 20)
STEM, LEAF, OUTLINE = (40, 120, 40), (70, 160, 60), (15, 15, 20)
PATTERNS = ("clouds", "bands", "mosaic", "grass", "bricks", "scales", "plaid", "drift")
RADIUS = 0.16              # flower radius (petal tips) as a fraction of the image side
PART_IDS = {"stem": 1, "leaf": 2, "petal": 3, "centre": 4}


def class_table(classes: int) -> list[dict]:
    """Attribute values per class, every value used about evenly (same rule as the birds)."""
    from protocli.data.synth import combinations

    limit = math.prod(len(values) for _, values in ATTRIBUTES)
    if classes > limit:
        raise BadInput(f"--classes {classes} is more than the {limit} attribute combinations the flowers have")
    table = []
    for combo in combinations(classes):
        used = list(zip(ATTRIBUTES, combo, strict=False))
        row = {name: values[v] for (name, values), v in used}
        row.setdefault("leaves", "one")
        label = len(table)
        row["class"] = f"{label + 1:03d}." + "_".join(values[v] for (_, values), v in used)
        step = next(k for k in (3, 5, 7, 11, 13) if math.gcd(k, classes) == 1)
        row["background"] = {"pattern": PATTERNS[(label * 3) % len(PATTERNS)],
                             "hue": round(((label * step) % classes) / classes + 0.05, 4)}
        table.append({"index": label, **row})
    return table


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    coarse = Image.fromarray(rng.random((cells, cells)).astype(np.float32), "F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def background(spec: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float texture of the spec's pattern in two shades of its hue."""
    from protocli.data.synth import _grid, _hsv

    x, y = _grid(size)
    period = 0.12 * size * rng.uniform(0.85, 1.15)
    ph = rng.uniform(0, period, 2)
    xs, ys = x + ph[0], y + ph[1]
    kind = spec["pattern"]
    if kind == "clouds":
        t = np.clip((0.6 * _smooth_noise(size, 4, rng) + 0.4 * _smooth_noise(size, 9, rng) - 0.5) * 3 + 0.5, 0, 1)
    elif kind == "bands":
        t = np.sin(2 * np.pi * ys / (1.4 * period) + 1.2 * np.sin(2 * np.pi * xs / (3 * period))) > 0
    elif kind == "mosaic":
        pts = rng.uniform(0, size, (14, 2))
        near = ((x[..., None] - pts[:, 0]) ** 2 + (y[..., None] - pts[:, 1]) ** 2).argmin(-1)
        t = rng.random(14)[near]
    elif kind == "grass":
        t = np.mod(xs + 0.25 * period * np.sin(2 * np.pi * ys / (2 * period)), period / 2.5) < period / 6
    elif kind == "bricks":
        row = np.floor(ys / (period * 0.6))
        t = (np.mod(ys, period * 0.6) < period * 0.12) | (np.mod(xs + (row % 2) * period / 2, period) < period * 0.12)
    elif kind == "scales":
        row = np.floor(ys / (period * 0.7))
        dx = np.mod(xs + (row % 2) * period / 2, period) - period / 2
        dy = np.mod(ys, period * 0.7)
        t = np.hypot(dx, dy) < period * 0.55
    elif kind == "plaid":
        t = 0.5 * (np.mod(xs / period, 1.0) < 0.35) + 0.5 * (np.mod(ys / (1.3 * period), 1.0) < 0.25)
    else:  # drift: diagonal streaks of smooth noise
        t = np.clip((_smooth_noise(size, 6, rng) + 0.35 * np.sin(2 * np.pi * (xs - ys) / period) - 0.5) * 2.5 + 0.5, 0, 1)
    light, dark = _hsv(spec["hue"], 0.45, 0.80), _hsv(spec["hue"] - 0.04, 0.75, 0.45)
    t = np.asarray(t, dtype=np.float64)[..., None]
    return light * (1 - t) + dark * t


def _petal(shape: str, r: float) -> np.ndarray:
    """One petal pointing along +x from the centre, in pixels (r: tip radius)."""
    if shape == "pointed":
        return np.array([[0.15 * r, -0.22 * r], [0.7 * r, -0.28 * r], [r, 0.0], [0.7 * r, 0.28 * r], [0.15 * r, 0.22 * r]])
    b = 0.30 if shape == "round" else 0.13
    t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    return np.stack([0.55 * r + 0.45 * r * np.cos(t), b * r * np.sin(t)], 1)


def render(row: dict, bg_spec: dict, size: int, rng: np.random.Generator):
    """One flower on one background -> (RGB uint8 array, bool mask, tight object box x0, y0, x1, y1)."""
    img = background(bg_spec, size, rng)
    r = RADIUS * size * rng.uniform(0.85, 1.15)
    stem_len = r * rng.uniform(1.1, 1.6)
    cx = rng.uniform(r + 3, size - r - 3)
    cy = rng.uniform(r + 3, max(r + 3, size - 3 - stem_len))
    lean = rng.uniform(-0.25, 0.25)
    base = np.array([cx + lean * stem_len, cy + stem_len])
    ids = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    draw.line([(cx, cy), tuple(base)], fill=PART_IDS["stem"], width=max(2, round(r * 0.12)))
    sides = {"one": (rng.choice([-1.0, 1.0]),), "two": (-1.0, 1.0), "none": ()}[row["leaves"]]
    for k, side in enumerate(sides):
        at = np.array([cx, cy]) + (0.55 + 0.2 * k) * (base - np.array([cx, cy]))
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        leaf = np.stack([0.45 * r * np.cos(t), 0.16 * r * np.sin(t)], 1)
        ang = math.radians(-35 if side > 0 else 215)
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        pts = leaf @ rot.T + at + 0.42 * r * np.array([math.cos(ang), math.sin(ang)])
        draw.polygon(pts.ravel().tolist(), fill=PART_IDS["leaf"])
    n, turn = 6, rng.uniform(0, 2 * np.pi)
    petal = _petal(row["shape"], r)
    for k in range(n):
        a = turn + 2 * np.pi * k / n
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        draw.polygon((petal @ rot.T + [cx, cy]).ravel().tolist(), fill=PART_IDS["petal"])
    rc = 0.3 * r
    draw.ellipse([cx - rc, cy - rc, cx + rc, cy + rc], fill=PART_IDS["centre"])
    ids = np.asarray(ids)
    x, y = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    jitter = rng.uniform(0.92, 1.06, 2)
    img[ids == PART_IDS["stem"]] = STEM
    img[ids == PART_IDS["leaf"]] = np.array(LEAF) * jitter[1]
    img[ids == PART_IDS["petal"]] = np.clip(np.array(PETAL[row["petals"]]) * jitter[0], 0, 255)
    centre = ids == PART_IDS["centre"]
    d = np.hypot(x - cx, y - cy)
    if row["centre"] == "solid":
        dark = np.zeros_like(d, dtype=bool)
    elif row["centre"] == "dotted":
        dark = (np.mod(x, 4.0) < 2) & (np.mod(y, 4.0) < 2)
    else:  # ringed
        dark = np.mod(d / max(rc / 2.5, 1.0), 1.0) < 0.5
    img[centre] = np.where(dark[centre][:, None], CENTRE_DARK, CENTRE)
    mask = ids > 0
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    img[mask & ~inner] = OUTLINE
    img += rng.normal(0, 3.0, img.shape)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, box
