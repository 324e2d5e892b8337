"""Fake runs for the review and antitypes tests: a run folder with push stages -> no torch needed.

A push folder holds what push.py writes: prototypes.json, model.safetensors ("prototypes" (P, D),
"last_layer.weight" (K, P)) and small PNGs (patches/, images/, heatmaps/, nearest/). Pictures are
a few distinct files hard-linked many times, so a 2000-prototype push is quick to build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from safetensors.numpy import save_file

IMG = 96


def class_names(k: int) -> list[str]:
    # One name holds brackets: labels must not be parsed as markup.
    return [f"{c + 1:03d}.{'[odd]_bird' if c == 1 else f'bird_{c}'}" for c in range(k)]


def _pictures(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"src{i}.png"
        img = Image.new("RGB", (IMG, IMG), (40 + 50 * i % 200, 90, 160 - 30 * i % 150))
        ImageDraw.Draw(img).ellipse([20, 20, 70, 70], fill=(220, 200 - 20 * i % 200, 40))
        img.save(path)
        out.append(path)
    return out


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())


def make_push(run: Path, push: str = "002-push", P: int = 12, K: int = 3, D: int = 8, seed: int = 0,
              moved: tuple[int, ...] = (), pictures: bool = True, k: int = 3,
              vectors: np.ndarray | None = None) -> Path:
    """Write run/stages/<push>/ (and a minimal manifest). Prototypes in `moved` sit on another
    image than in a push with the default layout; everything else is the same patch in every push."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "manifest.json").exists():
        (run / "manifest.json").write_text(json.dumps({"version": 1, "stages": []}))
    d = run / "stages" / push
    d.mkdir(parents=True)
    manifest = json.loads((run / "manifest.json").read_text())  # the manifest lists the run's stages
    manifest["stages"] = sorted([*manifest["stages"], {"id": push, "kind": "push", "at": "2026-01-01T00:00:00Z"}],
                                key=lambda s: int(s["id"].split("-")[0]))
    (run / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(seed)
    if vectors is None:
        vectors = np.random.default_rng(0).random((P, D), dtype=np.float32)
    weight = np.full((K, P), -0.5, dtype=np.float32)
    per = max(1, P // K)
    names = class_names(K)
    protos = []
    for j in range(P):
        c = min(j // per, K - 1)
        weight[c, j] = 1.0 + 0.01 * ((j * 37) % 50)
        image = f"{names[c]}/img_{j % 7:04d}.png" if j not in moved else f"{names[c]}/moved_{j:04d}.png"
        nearest = [{"image": f"{names[(c + i) % K]}/n_{i}.png", "image_index": i, "class": (c + i) % K,
                    "cell": [i, i], "distance": round(0.01 * (i + 1), 4), "box": [0, 0, 24, 24]}
                   for i in range(k)]
        protos.append({"prototype": j, "class": c, "class_name": names[c], "image": image,
                       "image_index": j % 7, "cell": [j % 4, (j // 4) % 4],
                       "projection_distance": round(float(rng.random()) * 0.1, 4), "box": [10, 12, 40, 44],
                       "weight": float(weight[c, j]), "duplicate_of": None, "nearest": nearest})
    meta = {"version": 1, "push": push, "img_size": IMG, "grid": [4, 4], "crop": True, "classes": names,
            "prototypes": protos}
    (d / "prototypes.json").write_text(json.dumps(meta))
    save_file({"prototypes": vectors.astype(np.float32), "last_layer.weight": weight}, str(d / "model.safetensors"))
    if pictures:
        src = _pictures(run / ".src", 5)
        for j in range(P):
            for sub in ("patches", "images", "heatmaps"):
                _link(src[j % len(src)], d / sub / f"{j:04d}.png")
            for i in range(1, k + 1):
                _link(src[(j + i) % len(src)], d / "nearest" / f"{j:04d}_{i}.png")
    return d


def screen_lines(svg: str) -> list[str]:
    """Text of an `App.export_screenshot()` SVG, one string per terminal line (a cheap snapshot).
    Runs of blank cells may be missing: compare substrings, not columns."""
    import html
    import re

    lines: dict[int, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text [^>]*x="([\d.]+)"[^>]*clip-path="url\(#[\w-]+-line-(\d+)\)">([^<]*)</text>', svg):
        lines.setdefault(int(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3))))
    return ["".join(t for _, t in sorted(lines.get(i, []))).replace("\xa0", " ").replace("\n", "")
            for i in range(max(lines, default=-1) + 1)]
