"""`protocli data synth`: parameters -> a confounded synthetic "birds" dataset in CUB-200-2011 layout.

Output folder: classes.txt, images.txt, image_class_labels.txt, train_test_split.txt,
bounding_boxes.txt, images/NNN.<class>/<class>_KKKK.png, segmentations/ (same names, 0/255 grey
PNG) and synth.json (parameters, the attribute table, and the class whose background each image
sits on). `open_cub` reads it like CUB.

Design (see data/README.md for the why):
- a bird is a filled compound shape - body ellipse, head disc, wing, tail, beak, eye - outlined in
  near-black so it stands out on every background. A class is a combination of part attributes:
  head colour x wing pattern x tail shape (x body colour for many classes); each attribute value is
  shared by several classes, so no single part or colour names the class;
- each class has its own background texture (pattern and hue). Train images sit on their class's
  background with probability `confound`, else on another class's; test backgrounds are uniform.
  A model that learns the background is right on train and loses accuracy on test;
- masks are the exact raster of the drawn shapes (no antialiasing, so no mask/edge ambiguity);
  bounding boxes are loose (object box + 15-35 % margin per side, clipped), so that the crop
  the loader takes keeps background around the bird, as CUB's boxes do.
Every image has its own numpy Generator seeded by (seed, class, index): the same seed gives
byte-identical files. Everything is written into a hidden sibling folder that is renamed to OUT at
the end, so an interrupted run leaves no half dataset.
"""

from __future__ import annotations

import colorsys
import functools
import itertools
import json
import math
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from protocli.console import progress_bar
from protocli.errors import BadInput
from protocli.pictures import png

ATTRIBUTES = (("head", ("red", "blue", "yellow")), ("wing", ("striped", "dotted", "checked")),
              ("tail", ("fan", "fork", "square")), ("body", ("cream", "grey", "brown")),
              ("beak", ("orange", "black", "white")))  # the beak varies only beyond 81 classes
HEAD = {"red": (225, 35, 35), "blue": (35, 85, 235), "yellow": (245, 205, 25)}
BODY = {"cream": (238, 226, 198), "grey": (150, 152, 160), "brown": (150, 95, 55)}
DARK, LIGHT = (25, 25, 35), (250, 250, 240)            # wing pattern colours
TAIL, BEAK, EYE, OUTLINE = (60, 66, 88), (250, 150, 30), (10, 10, 10), (15, 15, 20)
BEAKS = {"orange": BEAK, "black": (30, 30, 30), "white": (245, 245, 245)}
PATTERNS = ("stripes", "checker", "dots", "waves", "blobs", "grid", "rings", "speckle")
BODY_LEN = 0.36            # body length L as a fraction of the image side (at scale 1)
MARGIN = (0.15, 0.35)      # loose box: margin per side as a fraction of the object's width/height
PART_IDS = {"tail": 1, "body": 2, "wing": 3, "head": 4, "beak": 5, "eye": 6}


# ----------------------------------------------------------------------------------- classes
def attribute_counts(classes: int) -> tuple[int, ...]:
    """Fewest attribute combinations >= classes: 3 binary attributes for 8, 4 for 16, ... (5 from 82 on)."""
    options = [c for n in (3, 4, 5) for c in itertools.product((3, 2), repeat=n) if list(c) == sorted(c)[::-1]]
    fits = [c for c in options if math.prod(c) >= classes]
    if not fits:
        raise BadInput(f"--classes {classes} is more than the {math.prod((3,) * 5)} attribute combinations "
                       "the synthetic birds have")
    return min(fits, key=lambda c: (math.prod(c), len(c)))


def combinations(classes: int) -> list[tuple[int, ...]]:
    """One combination of attribute value indices per class, chosen deterministically so that every
    value is used evenly (shared by every family of `data synth`)."""
    counts = attribute_counts(classes)
    usage = [[0] * n for n in counts]
    left, chosen = list(itertools.product(*(range(n) for n in counts))), []
    while len(chosen) < classes:  # greedy: the combination whose values are least used so far
        best = min(left, key=lambda c: (max(usage[a][v] for a, v in enumerate(c)),
                                        sum(usage[a][v] ** 2 for a, v in enumerate(c)), c))
        left.remove(best)
        chosen.append(best)
        for a, v in enumerate(best):
            usage[a][v] += 1
    return sorted(chosen)


def class_table(classes: int) -> list[dict]:
    """Attribute values per class, chosen deterministically so every value is used evenly."""
    table = []
    for combo in combinations(classes):
        used = list(zip(ATTRIBUTES, combo, strict=False))  # 3, 4 or 5 attributes
        row = {name: values[v] for (name, values), v in used}
        row.setdefault("body", "cream")
        label = len(table)
        row["class"] = f"{label + 1:03d}." + "_".join(values[v] for (_, values), v in used)
        row["background"] = background_spec(label, classes)
        table.append({"index": label, **row})
    return table


def background_spec(label: int, classes: int) -> dict:
    """Pattern and hue of a class's own background; hues are spread so neighbours differ."""
    step = next(k for k in (3, 5, 7, 11, 13) if math.gcd(k, classes) == 1)
    return {"pattern": PATTERNS[label % len(PATTERNS)], "hue": round(((label * step) % classes) / classes, 4)}


# ----------------------------------------------------------------------------------- drawing
def _ellipse(cx, cy, a, b, rot=0.0, n=48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _tail(shape: str) -> np.ndarray:
    if shape == "fan":
        t = np.radians(np.linspace(135, 225, 19))
        arc = np.stack([-0.40 + 0.48 * np.cos(t), 0.48 * np.sin(t)], 1)
        return np.concatenate([[[-0.38, -0.11]], arc, [[-0.38, 0.11]]])
    if shape == "fork":
        return np.array([[-0.38, -0.13], [-0.92, -0.38], [-0.64, 0.0], [-0.92, 0.38], [-0.38, 0.13]])
    return np.array([[-0.38, -0.15], [-0.84, -0.19], [-0.84, 0.19], [-0.38, 0.15]])  # square


WING = dict(cx=-0.06, cy=0.0, a=0.34, b=0.20, rot=math.radians(-8))


def bird_parts(row: dict) -> list[tuple[str, np.ndarray]]:
    """Polygons in the bird's own frame (units of body length, facing +x), in drawing order."""
    return [("tail", _tail(row["tail"])), ("body", _ellipse(0.0, 0.02, 0.50, 0.34)),
            ("wing", _ellipse(**WING)), ("head", _ellipse(0.46, -0.26, 0.24, 0.24)),
            ("beak", np.array([[0.64, -0.33], [0.86, -0.24], [0.64, -0.17]])),
            ("eye", _ellipse(0.52, -0.30, 0.05, 0.05, n=16))]


def _wing_pattern(u: np.ndarray, v: np.ndarray, kind: str) -> np.ndarray:
    """True where the wing is dark, from wing-frame coordinates in units of body length."""
    if kind == "striped":
        return np.mod(u / 0.16, 1.0) < 0.5
    if kind == "dotted":
        du, dv = np.mod(u / 0.17, 1.0) - 0.5, np.mod(v / 0.17 + 0.5, 1.0) - 0.5
        return du * du + dv * dv < (0.06 / 0.17) ** 2
    return (np.floor(u / 0.16) + np.floor(v / 0.16)) % 2 == 1  # checked


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y of every pixel centre (read-only, shared between images)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255


def background(spec: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float texture: the spec's pattern mixing two shades of its hue."""
    x, y = _grid(size)
    period = 0.15 * size * rng.uniform(0.85, 1.15)
    ang = math.radians(rng.uniform(-10, 10))
    ph = rng.uniform(0, period, 2)
    xr, yr = x * math.cos(ang) - y * math.sin(ang) + ph[0], x * math.sin(ang) + y * math.cos(ang) + ph[1]
    kind = spec["pattern"]
    if kind == "stripes":
        t = np.mod((xr + yr) / (period * math.sqrt(2)), 1.0) < 0.5
    elif kind == "checker":
        t = (np.floor(xr / period) + np.floor(yr / period)) % 2 == 1
    elif kind == "dots":
        dx, dy = np.mod(xr / period, 1.0) - 0.5, np.mod(yr / period, 1.0) - 0.5
        t = dx * dx + dy * dy < 0.32 ** 2
    elif kind == "waves":
        t = np.mod((yr + 0.3 * period * np.sin(2 * np.pi * xr / (1.6 * period))) / period, 1.0) < 0.5
    elif kind == "blobs":
        coarse = Image.fromarray(rng.random((6, 6)).astype(np.float32), "F")
        t = np.clip((np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)) - 0.5) * 4 + 0.5, 0, 1)
    elif kind == "grid":
        t = (np.mod(xr / period, 1.0) < 0.28) | (np.mod(yr / period, 1.0) < 0.28)
    elif kind == "rings":
        cx, cy = rng.uniform(0, size, 2)
        t = np.mod(np.hypot(x - cx, y - cy) / period, 1.0) < 0.5
    else:  # speckle: a gradient in a random direction under coarse salt-and-pepper grains
        d = rng.uniform(0, 2 * np.pi)
        grad = ((x - size / 2) * math.cos(d) + (y - size / 2) * math.sin(d)) / size + 0.5
        grain = np.kron(rng.random((size // 3 + 1, size // 3 + 1)), np.ones((3, 3)))[:size, :size]
        t = np.clip(grad * 0.6 + (grain > 0.7) * 0.7, 0, 1)
    light, dark = _hsv(spec["hue"], 0.30, 0.88), _hsv(spec["hue"] + 0.03, 0.60, 0.58)
    t = np.asarray(t, dtype=np.float64)[..., None]
    return light * (1 - t) + dark * t


def render(row: dict, bg_spec: dict, size: int, rng: np.random.Generator):
    """One bird on one background -> (RGB uint8 array, bool mask, tight object box x0, y0, x1, y1)."""
    img = background(bg_spec, size, rng)
    length = BODY_LEN * size * rng.uniform(0.85, 1.15)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    theta = math.radians(rng.uniform(-12, 12))
    c, s = math.cos(theta), math.sin(theta)
    m = length * np.array([[c * flip, -s], [s * flip, c]])   # bird frame -> image, before translation
    parts = [(name, pts @ m.T) for name, pts in bird_parts(row)]
    allpts = np.concatenate([p for _, p in parts])
    lo, hi = allpts.min(0), allpts.max(0)
    t = np.array([rng.uniform(3 - lo[i], max(3 - lo[i], size - 3 - hi[i])) for i in (0, 1)])
    ids = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    for name, pts in parts:
        draw.polygon((pts + t).ravel().tolist(), fill=PART_IDS[name])
    ids = np.asarray(ids)
    # Wing pixels in the wing's own frame (body lengths), so the pattern turns with the bird.
    wy, wx = np.nonzero(ids == PART_IDS["wing"])
    px, py = wx + 0.5 - t[0], wy + 0.5 - t[1]
    inv = np.linalg.inv(m)
    qu = inv[0, 0] * px + inv[0, 1] * py - WING["cx"]
    qv = inv[1, 0] * px + inv[1, 1] * py - WING["cy"]
    wc, ws = math.cos(-WING["rot"]), math.sin(-WING["rot"])
    dark = _wing_pattern(wc * qu - ws * qv, ws * qu + wc * qv, row["wing"])
    img[wy, wx] = np.where(dark[:, None], DARK, LIGHT)
    jitter = rng.uniform(0.92, 1.08, 3)                       # per-image shade of head, body, tail
    colours = {1: np.array(TAIL) * jitter[2], 2: np.array(BODY[row["body"]]) * jitter[1],
               4: np.array(HEAD[row["head"]]) * jitter[0], 5: np.array(BEAKS[row.get("beak", "orange")]), 6: np.array(EYE)}
    for pid, col in colours.items():
        img[ids == pid] = col
    mask = ids > 0
    inner = mask.copy()                                        # 4-neighbour erosion -> outline
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    img[mask & ~inner] = OUTLINE
    img += rng.normal(0, 3.0, img.shape)                        # mild sensor noise everywhere
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, box


def loose_box(obj: tuple[int, int, int, int], size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Object box grown by a random margin on each side, clipped to the image: (x, y, w, h) ints."""
    x0, y0, x1, y1 = obj
    ow, oh = x1 - x0, y1 - y0
    left, top, right, bottom = rng.uniform(*MARGIN, 4) * np.array([ow, oh, ow, oh])
    bx0, by0 = max(0, math.floor(x0 - left)), max(0, math.floor(y0 - top))
    bx1, by1 = min(size, math.ceil(x1 + right)), min(size, math.ceil(y1 + bottom))
    return bx0, by0, bx1 - bx0, by1 - by0


# ----------------------------------------------------------------------------------- families
FAMILIES = ("birds", "flowers")


def family_module(family: str):
    """(class_table, render) of a family: `birds` here, `flowers` in protocli/data/flowers.py."""
    if family == "birds":
        return class_table, render
    if family == "flowers":
        from protocli.data import flowers

        return flowers.class_table, flowers.render
    raise BadInput(f"--family {family!r}: expected one of {', '.join(FAMILIES)}")


# ----------------------------------------------------------------------------------- writing
def _validate(out: Path, classes, train_per_class, test_per_class, size, confound, seed) -> None:
    checks = [(classes >= 2, f"--classes must be at least 2, got {classes}"),
              (train_per_class >= 1, f"--train-per-class must be at least 1, got {train_per_class}"),
              (test_per_class >= 1, f"--test-per-class must be at least 1, got {test_per_class}"),
              (32 <= size <= 1024, f"--size must be between 32 and 1024 pixels, got {size}"),
              (0.0 <= confound <= 1.0, f"--confound must be a probability in [0, 1], got {confound}"),
              (seed >= 0, f"--seed must be a non-negative integer, got {seed}")]
    for ok, message in checks:
        if not ok:
            raise BadInput(message)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput("output folder exists and is not empty; choose a new folder or remove this one", out)


def _sample(tmp: Path, table: list[dict], label: int, k: int, train: bool, size: int, confound: float,
            seed: int, digits: int, render=render) -> tuple[str, tuple[int, ...], float, int]:
    """Draw, encode and write image k of class `label` -> (name, loose box, object fraction, background)."""
    rng = np.random.default_rng([seed, label, k])  # per image: independent of counts and of threads
    classes, row = len(table), table[label]
    if not train:                        # test: any background, the own one included
        bg = int(rng.integers(classes))
    elif rng.random() < confound:        # train: the class's own background...
        bg = label
    else:                                # ...or one of the other classes' backgrounds
        bg = int(rng.integers(classes - 1))
        bg += bg >= label
    img, mask, obj = render(row, table[bg]["background"], size, rng)
    x, y, w, h = loose_box(obj, size, rng)
    name = row["class"]
    rel = f"{name}/{name.split('.', 1)[1]}_{k + 1:0{digits}d}.png"
    for folder, arr in (("images", img), ("segmentations", mask.astype(np.uint8) * 255)):
        # Plain writes are safe here: the rename of the whole folder is the commit point.
        (tmp / folder / rel).write_bytes(png(arr, compress_level=1))
    return rel, (x, y, w, h), float(mask[y:y + h, x:x + w].mean()), bg


def _draw_all(tmp: Path, table: list[dict], jobs: list[tuple], size: int, confound: float, seed: int, digits: int,
              draw) -> tuple[dict[str, list[str]], list[float], list[int]]:
    """Draw every (label, k, train) job into `tmp` -> the CUB index lines (images, labels, split, boxes),
    each image's object fraction in its box, and its background class; in image order."""
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes")}
    fractions, backgrounds = [], []
    for row in table:
        for folder in ("images", "segmentations"):
            (tmp / folder / row["class"]).mkdir(parents=True)
    # Threads overlap PNG encoding and file writes (both release the GIL); map keeps the order.
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    try:
        results = pool.map(lambda job: _sample(tmp, table, *job, size, confound, seed, digits, draw), jobs)
        done = zip(jobs, results, strict=True)
        with progress_bar("drawing images", len(jobs)) as advance:
            for i, ((label, _, train), (rel, box, fraction, bg)) in enumerate(done, 1):
                lines["images"].append(f"{i} {rel}")
                lines["labels"].append(f"{i} {label + 1}")
                lines["split"].append(f"{i} {int(train)}")
                lines["boxes"].append(f"{i} " + " ".join(f"{v:.1f}" for v in box))
                fractions.append(fraction)
                backgrounds.append(bg)
                advance()
    finally:  # on Ctrl-C or an error, drop the queued images instead of drawing them all first
        pool.shutdown(wait=True, cancel_futures=True)
    return lines, fractions, backgrounds


def _write_index(tmp: Path, lines: dict[str, list[str]], table: list[dict], meta: dict) -> None:
    """The CUB text files and synth.json (`meta`)."""
    files = {"images.txt": lines["images"], "image_class_labels.txt": lines["labels"],
             "train_test_split.txt": lines["split"], "bounding_boxes.txt": lines["boxes"],
             "classes.txt": [f"{r['index'] + 1} {r['class']}" for r in table]}
    for fname, rows in files.items():
        (tmp / fname).write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp / "synth.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def synth(out: Path, classes: int = 8, train_per_class: int = 40, test_per_class: int = 20, size: int = 96,
          confound: float = 0.8, seed: int = 0, family: str = "birds") -> dict:
    """Write the dataset to OUT (must not exist or be empty) and return a summary dict."""
    start = time.perf_counter()
    out = Path(out)
    make_table, draw = family_module(family)
    _validate(out, classes, train_per_class, test_per_class, size, confound, seed)
    table = make_table(classes)
    per_class = train_per_class + test_per_class
    digits = max(4, len(str(per_class)))
    jobs = [(label, k, k < train_per_class) for label in range(classes) for k in range(per_class)]
    out.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling (same file system, so the final rename is atomic); mkdir honours the umask,
    # unlike tempfile.mkdtemp's 0700.
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        lines, fractions, backgrounds = _draw_all(tmp, table, jobs, size, confound, seed, digits, draw)
        params = {"family": family, "classes": classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
                  "size": size, "confound": confound, "seed": seed}
        # backgrounds[i]: the class whose background image id i + 1 sits on (for confound analyses).
        meta = {"version": 1, "generator": "protocli data synth", **params, "attributes": table,
                "backgrounds": backgrounds}
        _write_index(tmp, lines, table, meta)
        try:
            if out.exists():
                out.rmdir()  # checked empty above; rename cannot replace a folder on every platform
            os.replace(tmp, out)
        except OSError as e:
            raise BadInput(f"cannot move the finished dataset into place ({e.strerror}); did something else "
                           "write there meanwhile?", out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out.resolve()), "family": family, "classes": classes, "train": classes * train_per_class,
            "test": classes * test_per_class, "size": size, "confound": confound, "seed": seed,
            "seconds": round(time.perf_counter() - start, 3),
            "object_fraction": round(float(np.mean(fractions)), 4), "attributes": table}
