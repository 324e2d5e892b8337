"""Typed readers of a run's files -> checked values, and the one rule for "is this push current".

Inputs: RUN/manifest.json, a push stage's prototypes.json and model.safetensors, the model config
in a weights file's metadata. Outputs: the same data, checked field by field; any fault is
BadInput naming the file and the field (exit 2), never a KeyError deep inside a stage.

The manifest is the one source of truth about stages: a folder under RUN/stages that it does not
list is not part of the run (a stage being built, or one killed before its commit). Torch-free:
weights are read with safetensors' numpy backend.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from protocli.errors import BadInput
from protocli.files import read_json

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
PROTOTYPES = "prototypes.json"
STAGE_ID = re.compile(r"(\d{3,})-([a-z]+)")
ENCODER_KEYS = ("features.", "add_on.", "prototypes")  # what a push's pictures depend on


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_int(x) for x in v)


class _Checker:
    """Field checks that raise BadInput("<file>: <field> is <value>, expected <what>")."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, msg: str) -> BadInput:
        return BadInput(msg, self.path)

    def need(self, ok: bool, field: str, value: Any, expected: str) -> None:
        if not ok:
            shown = repr(value)
            raise self.fail(f"{field} is {shown[:60] + '...' if len(shown) > 60 else shown}, expected {expected}")

    def obj(self, parent: dict, key: str, where: str) -> dict:
        v = parent.get(key, _MISSING)
        if v is _MISSING:
            raise self.fail(f"{where}{key} is missing")
        self.need(isinstance(v, dict), f"{where}{key}", v, "an object")
        return v

    def get(self, parent: dict, key: str, where: str, ok, expected: str, optional: bool = False) -> Any:
        if key not in parent:
            if optional:
                return None
            raise self.fail(f"{where}{key} is missing")
        v = parent[key]
        self.need(ok(v), f"{where}{key}", v, expected)
        return v


_MISSING = object()


# -- manifest --------------------------------------------------------------------------------------
def read_manifest(run_dir, full: bool = True) -> dict:
    """RUN/manifest.json, checked. `full=False` checks only what listing stages needs."""
    from dataclasses import fields

    from protocli.recipes import TrainConfig

    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    m = read_json(path, "run manifest")
    c = _Checker(path)
    if not isinstance(m, dict) or m.get("version") != 1:
        raise c.fail("not a protocli run manifest (version 1)")
    stages = c.get(m, "stages", "", lambda v: isinstance(v, list), "a list")
    last = 0
    seen = set()
    for i, s in enumerate(stages):
        where = f"stages[{i}]."
        c.need(isinstance(s, dict), f"stages[{i}]", s, "an object")
        sid = c.get(s, "id", where, lambda v: isinstance(v, str) and STAGE_ID.fullmatch(v), "NNN-kind")
        num, kind = STAGE_ID.fullmatch(sid).groups()
        c.get(s, "kind", where, lambda v, k=kind: v == k, f"{kind!r} (the end of its id)")
        c.need(int(num) > last and sid not in seen, f"{where}id", sid, "a number above the stage before it")
        last = int(num)
        seen.add(sid)
        c.get(s, "weights", where, lambda v: isinstance(v, bool), "true or false", optional=True)
        if not (run_dir / "stages" / sid).is_dir():
            raise c.fail(f"{where}id is {sid!r} but the folder stages/{sid} is missing")
    if full:
        data = c.obj(m, "data", "")
        c.get(data, "root", "data.", lambda v: isinstance(v, str) and v != "", "a folder path")
        c.get(data, "fingerprint", "data.", lambda v: v is None or isinstance(v, str), "a string")
        c.get(data, "crop", "data.", lambda v: isinstance(v, bool), "true or false", optional=True)
        model = c.obj(m, "model", "")
        c.get(model, "backbone", "model.", lambda v: isinstance(v, str) and v != "", "a backbone name")
        train = c.obj(m, "train", "")
        types = {f.name: str(f.type) for f in fields(TrainConfig)}
        extra = sorted(set(train) - set(types))
        if extra:
            raise c.fail(f"train.{extra[0]} is not a training option of this protocli")
        for key, value in train.items():  # `train --resume` builds its config from these
            c.need(_fits(value, types[key]), f"train.{key}", value, types[key])
    return m


def _fits(value: Any, annotation: str) -> bool:
    """Does a JSON value fit a TrainConfig field annotated "int", "float", "str | None", ...?"""
    kinds = {k.strip() for k in annotation.split("|")}
    return ((value is None and "None" in kinds) or (isinstance(value, bool) and "bool" in kinds)
            or (_int(value) and ("int" in kinds or "float" in kinds)) or (_num(value) and "float" in kinds)
            or (isinstance(value, str) and "str" in kinds))


ROUND_NUMBERS = ("round", "non_object", "clicks", "decisions", "antitypes", "accuracy_before_ft",
                 "accuracy_after_ft", "train_accuracy", "non_object_after", "overlap_ge_75", "unique", "seconds")


def read_rounds(path) -> list[dict]:
    """The rows of RUN/rounds.json (what `rounds` writes), each number checked; [] when there is none."""
    path = Path(path)
    if not path.exists():
        return []
    doc = read_json(path, "rounds file")
    c = _Checker(path)
    rows = doc.get("rounds") if isinstance(doc, dict) else doc
    c.need(isinstance(rows, list), "rounds", rows, "a list of rows")
    for i, row in enumerate(rows):
        c.need(isinstance(row, dict), f"rounds[{i}]", row, "an object")
        for key in ROUND_NUMBERS:
            if key in row:
                c.need(row[key] is None or _num(row[key]), f"rounds[{i}].{key}", row[key], "a number or null")
    return rows


def stage_ids(manifest: dict, kind: str | None = None) -> list[str]:
    return [s["id"] for s in manifest["stages"] if kind is None or s["kind"] == kind]


def current_weights(run_dir, manifest: dict) -> Path:
    """The weights the run's model has now: those of the newest committed stage that saved a model."""
    run_dir = Path(run_dir)
    for s in reversed(manifest["stages"]):
        path = run_dir / "stages" / s["id"] / WEIGHTS
        if s.get("weights", path.exists()):  # runs written before "weights" was recorded: the file says
            return path
    return run_dir / WEIGHTS


# -- a push stage ----------------------------------------------------------------------------------
def read_push_doc(push_dir) -> dict:
    """A push's prototypes.json, every field checked (see docs/ARCHITECTURE.md for the format)."""
    push_dir = Path(push_dir)
    path = push_dir / PROTOTYPES
    doc = read_json(path, "push file")
    c = _Checker(path)
    if not isinstance(doc, dict):
        raise c.fail("expected a JSON object")
    c.get(doc, "version", "", lambda v: v == 1, "1")
    c.get(doc, "push", "", lambda v: v == push_dir.name, f"{push_dir.name!r} (its folder)")
    size = c.get(doc, "img_size", "", lambda v: _int(v) and v > 0, "a positive integer")
    H, W = c.get(doc, "grid", "", lambda v: _ints(v, 2) and min(v) > 0, "[H, W] positive integers")
    c.get(doc, "crop", "", lambda v: isinstance(v, bool), "true or false")
    classes = c.get(doc, "classes", "", lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v),
                    "a list of class names")
    if "box_map" in doc:
        c.get(doc, "box_map", "", lambda v: v in ("before", "after"), "before or after")
    protos = c.get(doc, "prototypes", "", lambda v: isinstance(v, list), "a list")
    K, P = len(classes), len(protos)

    def in_box(v) -> bool:
        return _ints(v, 4) and 0 <= v[0] < v[2] <= size and 0 <= v[1] < v[3] <= size

    def patch(p: dict, where: str, distance: str = "distance") -> None:
        c.get(p, "image", where, lambda v: isinstance(v, str) and v != "", "an image path")
        c.get(p, "image_index", where, lambda v: _int(v) and v >= 0, "an image index")
        c.get(p, "class", where, lambda v: _int(v) and 0 <= v < K, f"a class index below {K}")
        c.get(p, "cell", where, lambda v: _ints(v, 2) and 0 <= v[0] < H and 0 <= v[1] < W,
              f"[h, w] inside the {H}x{W} grid")
        c.get(p, distance, where, lambda v: v is None or (_num(v) and v >= 0), "a distance or null")
        c.get(p, "box", where, in_box, f"[x0, y0, x1, y1] inside {size}x{size}")

    for j, p in enumerate(protos):
        where = f"prototypes[{j}]."
        c.need(isinstance(p, dict), f"prototypes[{j}]", p, "an object")
        c.get(p, "prototype", where, lambda v, j=j: v == j and _int(v), str(j))
        if "projection_distance" not in p and "distance" in p:  # pushes written before the rename
            p["projection_distance"] = p["distance"]
        patch(p, where, "projection_distance")
        c.get(p, "class_name", where, lambda v: isinstance(v, str), "a string")
        c.get(p, "weight", where, _num, "a number")
        c.get(p, "duplicate_of", where, lambda v: v is None or (_int(v) and 0 <= v < P), "a prototype index or null")
        near = c.get(p, "nearest", where, lambda v: isinstance(v, list), "a list")
        for r, n in enumerate(near):
            c.need(isinstance(n, dict), f"{where}nearest[{r}]", n, "an object")
            patch(n, f"{where}nearest[{r}].")
    return doc


def read_push_weights(push_dir, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Tensors of a push's model.safetensors as numpy arrays (all, or those starting with `keys`)."""
    path = Path(push_dir) / WEIGHTS
    return read_tensors(path, keys, what="weights of the push")


def read_tensors(path: Path, keys: tuple[str, ...] | None = None, what: str = "weights file") -> dict:
    from safetensors import safe_open

    if not path.exists():
        raise BadInput(f"{what} not found", path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys() if keys is None or k.startswith(keys)}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise BadInput(f"not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                       path) from None


def pushed_vectors(push_dir) -> np.ndarray:
    """The prototype vectors a push saved, (P, D) float32."""
    path = Path(push_dir) / WEIGHTS
    t = read_push_weights(push_dir, ("prototypes",)).get("prototypes")
    if t is None or t.ndim < 2 or t.shape[0] == 0:
        raise BadInput("no 'prototypes' tensor of shape (P, D, ...)", path)
    return t.reshape(len(t), -1).astype(np.float32)


def read_push(push_dir) -> tuple[dict, np.ndarray]:
    """prototypes.json and the pushed vectors, checked to agree in number."""
    doc, vectors = read_push_doc(push_dir), pushed_vectors(push_dir)
    if len(doc["prototypes"]) != len(vectors):
        raise BadInput(f"{len(doc['prototypes'])} prototypes but {len(vectors)} vectors in {WEIGHTS}",
                       Path(push_dir) / PROTOTYPES)
    return doc, vectors


def model_config(meta: dict | None, path: Path) -> dict:
    """The model config dict in a weights file's metadata (checked as JSON; fields by ModelConfig)."""
    import json

    if not meta or "config" not in meta:
        raise BadInput("no model config in the safetensors metadata (not written by protocli?)", path)
    try:
        cfg = json.loads(meta["config"])
    except (ValueError, TypeError) as e:
        raise BadInput(f"metadata 'config' is not valid JSON ({e})", path) from None
    if not isinstance(cfg, dict):
        raise BadInput("metadata 'config' is not a JSON object", path)
    return cfg


# -- the one rule for "is this push current" -------------------------------------------------------
def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def push_is_current(current, push_dir) -> bool:
    """True when `current` (a model's state_dict, or tensors read from a weights file) holds exactly
    the prototypes and encoder the push saved: its pictures and boxes still describe the model.

    Exact equality, not closeness: a push copies latent vectors bit for bit, so any difference means
    the prototypes were trained since (even by a step too small for allclose to notice).
    """
    if push_dir is None or not (Path(push_dir) / WEIGHTS).exists():
        return False
    pushed = read_push_weights(push_dir, ENCODER_KEYS)
    if "prototypes" not in pushed:
        return False
    for k, v in pushed.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k not in current:
            return False
        now = _np(current[k])
        if now.shape != v.shape or not np.array_equal(now, v):
            return False
    return True
