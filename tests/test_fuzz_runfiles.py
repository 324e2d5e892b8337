"""Fuzz: damaged antitypes.json, prototypes.json and manifest.json -> BadInput naming the file, nothing written.

Each case damages one file of a trained tiny run in one way (a field deleted, a field given a value
of the wrong type or out of range, the text cut short, bytes that are not UTF-8, nesting too deep)
and calls the stage functions that read it, in-process. Every call must raise BadInput whose one-line
message names the damaged file, and leave every file of the run as it was. The fields and the values
that are wrong for them follow the file formats in docs/ARCHITECTURE.md and docs/integrity.md;
seeds are fixed, so the cases are the same on every run.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocli import antitypes as at
from protocli.cli import app
from protocli.errors import BadInput
from protocli.mask import rejected_on_latest_push
from protocli.model import pushed_prototypes as pushed_vectors
from protocli.review.state import list_pushes, open_state
from protocli.run import Run
from protocli.simulate import push_object_stats, simulate

MISSING = object()  # "delete the key"
BAD_INDEX = ["0", None, 1.5, True, -1]
BAD_STR = [1, None, [], {}]
BAD_LIST = [{}, "x", None, 3]
BAD_OBJ = [[], "x", None, 2]
BAD_BOOL = [1, "true", None]
BAD_NUM = ["1", None, [], True, float("nan")]
BAD_PAIR = [[1], [1, 2, 3], "x", None, [1.5, 0], [-1, 0]]
BAD_BOX = [[0, 0, 0, 0], [1, 2, 3], "box", None, [0.5, 0, 4, 4], [0, 0, 10_000, 4]]


def prototypes_spec(doc: dict) -> list[tuple[tuple, list, bool]]:
    """(path, wrong values, may be deleted) for prototypes.json; '*' is an index into the list above."""
    K, P = len(doc["classes"]), len(doc["prototypes"])
    patch = [("image", [*BAD_STR, ""]), ("image_index", BAD_INDEX), ("class", [*BAD_INDEX, K]),
             ("cell", [*BAD_PAIR, [99, 0]]), ("distance", ["1", [], True, -1.0]), ("box", BAD_BOX)]
    spec = [(("version",), [2, "1", None], True), (("push",), [1, None, "", "009-push"], True),
            (("img_size",), [0, -3, 1.5, "32", None, True], True), (("grid",), BAD_PAIR, True),
            (("crop",), BAD_BOOL, True), (("classes",), [[], "x", [1], None], True),
            (("prototypes",), BAD_LIST, True)]
    own = [("projection_distance", bad) if key == "distance" else (key, bad) for key, bad in patch]
    for key, bad in [("prototype", [*BAD_INDEX, P + 3]), *own, ("class_name", BAD_STR), ("weight", BAD_NUM),
                     ("duplicate_of", ["0", 1.5, -1, P]), ("nearest", BAD_LIST)]:
        spec.append((("prototypes", "*", key), bad, True))
    for key, bad in patch:
        spec.append((("prototypes", "*", "nearest", "*", key), bad, True))
    return spec


def antitypes_spec(doc: dict) -> list[tuple[tuple, list, bool]]:
    D = len(doc["antitypes"][0]["vector"])
    push = [1, "", "009-push", []]
    proto = [*BAD_INDEX, 10_000]
    return [(("version",), [2, "1", None], True), (("push",), push, False), (("decisions",), BAD_LIST, False),
            (("antitypes",), BAD_LIST, False),
            (("decisions", "*", "prototype"), proto, True), (("decisions", "*", "verdict"), ["maybe", None, 1], True),
            (("decisions", "*", "by"), ["robot", None, 1], True), (("decisions", "*", "at"), [1, None, []], True),
            (("decisions", "*", "push"), [*push, None], True),
            (("antitypes", "*", "prototype"), proto, True), (("antitypes", "*", "class"), ["0", None, 1.5], True),
            (("antitypes", "*", "push"), [*push, None], True), (("antitypes", "*", "box"), BAD_BOX[1:5], True),
            (("antitypes", "*", "vector"), [[], [0.5] * (D + 1), "x", ["a"] * D, None, [float("nan")] * D], True)]


def manifest_spec(doc: dict) -> list[tuple[tuple, list, bool]]:
    return [(("version",), [2, "1", None], True), (("stages",), BAD_LIST, True),
            (("stages", "*", "id"), ["x", "1-push", "099-push", None, 5], True),
            (("stages", "*", "kind"), ["other", None, 1], True), (("stages", "*", "weights"), ["yes", 1, None], False),
            (("data",), BAD_OBJ, True), (("data", "root"), ["", None, 1], True),
            (("data", "fingerprint"), [1, []], True), (("data", "crop"), ["yes", 1, None], False),
            (("model",), BAD_OBJ, True), (("model", "backbone"), ["", None, 1], True),
            (("train",), BAD_OBJ, True), (("train", "no_such_option"), [1], False),
            (("train", "seed"), ["0", 1.5, None, True], False), (("train", "lr_last"), ["x", None, True], False)]


def expand(doc, path: tuple, rng: random.Random, picks: int) -> list[tuple]:
    """Concrete paths for a path with '*' (the first, the last and a random element of each list)."""
    out = [()]
    for part in path:
        nxt = []
        for prefix in out:
            node = doc
            for p in prefix:
                node = node[p]
            if part == "*":
                n = len(node)
                idx = sorted({0, n - 1, rng.randrange(n)})[:picks] if n else []
                nxt += [(*prefix, i) for i in idx]
            else:
                nxt.append((*prefix, part))
        out = nxt
    return out


def mutate(doc, path: tuple, value):
    doc = copy.deepcopy(doc)
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is MISSING:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def cases(name: str, doc: dict, spec, seed: int, picks: int, cuts: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for path, bad, deletable in spec:
        for concrete in expand(doc, path, rng, picks):
            for value in ([MISSING] if deletable else []) + bad:
                label = f"{name}:{'.'.join(map(str, concrete))}={'<deleted>' if value is MISSING else repr(value)}"
                out.append((label, json.dumps(mutate(doc, concrete, value)).encode()))
    text = json.dumps(doc, indent=1).encode()
    for pos in sorted(rng.sample(range(1, text.rindex(b"}")), cuts)):
        out.append((f"{name}:cut at {pos}", text[:pos]))
    out += [(f"{name}:top is {t}", t.encode()) for t in ("[]", '"x"', "1", "null", "")]
    out += [(f"{name}:not UTF-8", b'{"version": 1, "\xff\xfe": 1}'), (f"{name}:nested", b"[" * 100_000)]
    return out


def snapshot(run: Path) -> dict:
    """Every file of the run -> (inode, size, mtime): an atomic replace or an in-place write changes it."""
    out = {}
    for folder, _, names in os.walk(run):
        for n in names:
            if n != ".lock":
                st = os.stat(os.path.join(folder, n))
                out[os.path.join(folder, n)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def decided_run(tiny_run):
    """The tiny run with an antitypes.json holding decisions and an antitype on its push."""
    run = Run.open(tiny_run)
    push = run.require_push()
    vectors = pushed_vectors(push).numpy()
    ants = at.Antitypes()
    ants.decide(0, "reject", "user", push.name, vector=vectors[0], cls=0, image="a.jpg", box=[0, 0, 4, 4])
    ants.decide(1, "accept", "simulated", push.name)
    ants.decide(2, "reject", "simulated", push.name, vector=vectors[2], cls=1, image="b.jpg", box=[1, 1, 5, 5])
    at.save(ants, run.antitypes_path)
    push_object_stats(run, run.cub())  # builds the mask cache, which is no input file
    return run


def test_fuzz_damaged_run_files(decided_run):
    run = decided_run
    push = run.require_push()
    cub = run.cub()
    P, D = pushed_vectors(push).shape
    files = {
        "antitypes.json": (run.antitypes_path, antitypes_spec, 2, 30),
        "prototypes.json": (push / "prototypes.json", prototypes_spec, 2, 30),
        "manifest.json": (run.path / "manifest.json", manifest_spec, 2, 30),
    }
    def sim():
        return simulate(Run.open(run.path), cub=cub)

    # (call, every n-th case): what the commands call first. The review opens its state, simulate and
    # mask read the decisions; every command opens the run. simulate reads antitypes.json after its
    # object statistics (~40 ms), so it gets every 8th of those cases to keep the test fast.
    calls = {
        "antitypes.json": [(lambda: open_state(run.path), 1), (sim, 8),
                           (lambda: rejected_on_latest_push(Run.open(run.path), None, P, D), 1)],
        "prototypes.json": [(lambda: open_state(run.path), 1), (sim, 1)],
        "manifest.json": [(lambda: Run.open(run.path), 1)],
    }
    total = 0
    for seed, (name, (path, spec, picks, cuts)) in enumerate(files.items()):
        good = path.read_bytes()
        doc = json.loads(good)
        all_cases = cases(name, doc, spec(doc), seed, picks, cuts)
        total += len(all_cases)
        for i, (label, data) in enumerate(all_cases):
            path.write_bytes(data)
            before = snapshot(run.path)
            for call in [c for c, every in calls[name] if i % every == 0]:
                try:
                    call()
                except BadInput as e:
                    msg = str(e)
                else:
                    pytest.fail(f"{label}: no BadInput")
                assert name in msg and "\n" not in msg, (label, msg)
            if name == "manifest.json":
                try:
                    list_pushes(run.path)
                except BadInput as e:
                    assert name in str(e), (label, str(e))
            assert snapshot(run.path) == before, label
        path.write_bytes(good)
    assert total >= 500, total
    print(f"{total} damaged files")


@pytest.mark.parametrize("name,args", [("antitypes.json", ["simulate"]), ("prototypes.json", ["simulate"]),
                                       ("manifest.json", ["evaluate"]), ("manifest.json", ["mask"])])
def test_damaged_file_through_the_cli_is_one_line_and_exit_2(decided_run, name, args):
    run = decided_run
    path = {"antitypes.json": run.antitypes_path, "manifest.json": run.path / "manifest.json",
            "prototypes.json": run.require_push() / "prototypes.json"}[name]
    doc = json.loads(path.read_text())
    key = {"antitypes.json": "version", "manifest.json": "data", "prototypes.json": "img_size"}[name]
    del doc[key]
    path.write_text(json.dumps(doc))
    before = snapshot(run.path)
    res = CliRunner().invoke(app, [*args, str(run.path), "--quiet"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and name in line and key in line, line
    assert snapshot(run.path) == before
