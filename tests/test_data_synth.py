"""`data synth`: determinism, counts, exact masks inside loose boxes, attributes, confounding."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocli.data.cub import open_cub
from protocli.data.synth import attribute_counts, class_table, synth
from protocli.errors import BadInput

SMALL = dict(classes=8, train_per_class=3, test_per_class=2, size=48)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "birds"
    synth(out, **SMALL, seed=1)
    return out


def bar(monkeypatch, advance):
    """Replace synth's progress bar by `advance`, recording the totals it was opened with."""
    from contextlib import contextmanager

    totals = []

    @contextmanager
    def fake(description, total):
        totals.append(total)
        yield advance

    monkeypatch.setattr("protocli.data.synth.progress_bar", fake)
    return totals


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path, monkeypatch):
    ticks = []
    totals = bar(monkeypatch, lambda n=1: ticks.append(n))
    summary = synth(tmp_path / "again", **SMALL, seed=1)
    assert files(tmp_path / "again") == files(small)
    assert totals == [8 * 5] and sum(ticks) == 8 * 5 and summary["train"] == 24 and summary["test"] == 16
    synth(tmp_path / "other", **SMALL, seed=2)
    other = files(tmp_path / "other")
    assert other.keys() == files(small).keys()
    assert all(other[k] != v for k, v in files(small).items() if k.startswith("images/"))


def test_layout_and_counts(small):
    cub = open_cub(small)
    assert cub.classes[0] == "001.red_striped_fan" and len(cub.classes) == 8
    assert [it.id for it in cub.items] == list(range(1, 41))
    assert cub.items[0].name == "001.red_striped_fan/red_striped_fan_0001.png"
    for split, n in (("train", 3), ("test", 2)):
        assert Counter(it.label for it in cub.split(split)) == {c: n for c in range(8)}
    assert cub.has_masks


def test_masks_binary_and_inside_loose_boxes(small):
    cub = open_cub(small)
    for it in cub.items:
        mask = np.asarray(cub.mask(it, crop=False).convert("L"))
        raw = np.asarray(Image.open(cub.mask_path(it)))
        assert set(np.unique(raw)) == {0, 255}
        ys, xs = np.nonzero(mask)
        x, y, w, h = (int(v) for v in it.box)
        assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
        assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48
        # Loose: background remains around the bird after the crop.
        assert (mask[y:y + h, x:x + w] > 0).mean() < 0.6
        assert cub.image(it).size == cub.mask(it).size == (w, h)


def test_attributes_are_shared_evenly(small):
    meta = json.loads((small / "synth.json").read_text())
    assert meta["seed"] == 1 and len(meta["attributes"]) == 8
    for attr in ("head", "wing", "tail"):
        counts = Counter(row[attr] for row in meta["attributes"])
        assert sorted(counts.values()) == [4, 4], (attr, counts)
    combos = {(r["head"], r["wing"], r["tail"]) for r in meta["attributes"]}
    assert len(combos) == 8
    assert len({(r["background"]["pattern"], r["background"]["hue"]) for r in meta["attributes"]}) == 8


def test_more_classes():
    assert attribute_counts(8) == (2, 2, 2) and attribute_counts(16) == (2, 2, 2, 2)
    assert attribute_counts(12) == (3, 2, 2) and attribute_counts(4) == (2, 2, 2)
    assert attribute_counts(81) == (3, 3, 3, 3) and attribute_counts(200) == (3, 3, 3, 3, 3)  # CUB's 200: + beak
    cub = class_table(200)
    assert len({r["class"] for r in cub}) == 200 and {r["beak"] for r in cub} == {"orange", "black", "white"}
    assert "beak" not in class_table(81)[0]  # up to 81 classes the tables (and files) are as before
    table = class_table(16)
    assert len({r["class"] for r in table}) == 16 and table[0]["class"].count("_") == 3
    assert len({(r["background"]["pattern"], r["background"]["hue"]) for r in table}) == 16
    four = class_table(4)
    for attr in ("head", "wing", "tail"):  # a balanced subset: each value used twice
        assert sorted(Counter(r[attr] for r in four).values()) == [2, 2]
    with pytest.raises(BadInput, match="attribute combinations"):
        class_table(244)


def test_confounding(tmp_path):
    def backgrounds(confound):
        out = tmp_path / f"c{confound}"
        synth(out, classes=4, train_per_class=20, test_per_class=30, size=32, confound=confound, seed=0)
        cub, meta = open_cub(out), json.loads((out / "synth.json").read_text())
        return [(it.label, it.train, bg) for it, bg in zip(cub.items, meta["backgrounds"], strict=True)]

    always = backgrounds(1.0)
    assert all(bg == label for label, train, bg in always if train)
    test_own = [bg == label for label, train, bg in always if not train]
    assert 0.1 < np.mean(test_own) < 0.45                   # uniform over 4 backgrounds: about 0.25
    assert all(bg != label for label, train, bg in backgrounds(0.0) if train)


def test_refuses_non_empty_output_and_bad_options(small, tmp_path):
    with pytest.raises(BadInput, match="not empty"):
        synth(small, **SMALL)
    (tmp_path / "empty").mkdir()
    synth(tmp_path / "empty", classes=2, train_per_class=1, test_per_class=1, size=32)
    assert (tmp_path / "empty" / "images.txt").exists()
    for bad in (dict(classes=1), dict(size=8), dict(confound=1.5), dict(train_per_class=0), dict(seed=-1)):
        with pytest.raises(BadInput):
            synth(tmp_path / "x", **bad)


def test_interrupted_synth_leaves_nothing(tmp_path, monkeypatch):
    def stop(n=1):
        raise KeyboardInterrupt

    bar(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        synth(tmp_path / "birds", classes=2, train_per_class=2, test_per_class=1, size=32)
    assert list(tmp_path.iterdir()) == []


def test_synth_passes_check(small):
    from protocli.data.check import check

    summary = check(small)
    assert summary["faults"] == 0 and summary["masks"] and (summary["train"], summary["test"]) == (24, 16)
