"""Suspicion signals, look-alikes, the simulated reviewer's walk and the masking effect: each against
a brute-force formula on small tensors, and end to end on the tiny run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from protocli import edge_colour as ec
from protocli import suspicion as su
from protocli.cli import app
from protocli.effort import walk


def test_percentile_rank_matches_a_loop_with_ties():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 5.0, 1.0])
    got = su.percentile_rank(x)
    n = len(x)
    for i in range(n):
        below = sum(float(v) < float(x[i]) for v in x)
        equal = sum(float(v) == float(x[i]) for v in x)
        assert got[i] == pytest.approx((below + (equal - 1) / 2) / (n - 1))


def test_grid_min_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    z, p = torch.rand(5, 3, 2, 4, generator=g), torch.rand(6, 3, generator=g)
    md, arg = su.grid_min(z, p, batch_size=2)
    for n in range(5):
        for j in range(6):
            d = [float(((z[n, :, h, w] - p[j]) ** 2).sum()) for h in range(2) for w in range(4)]
            assert md[n, j] == pytest.approx(min(d), abs=1e-5) and int(arg[n, j]) == int(np.argmin(d))


def _doc(cells, images=None, boxes=None, size=8):
    n = len(cells)
    return {"img_size": size, "grid": [2, 2], "prototypes": [
        {"prototype": j, "class": j % 2, "image": (images or ["a"] * n)[j], "cell": list(cells[j]),
         "box": (boxes or [[0, 0, 2, 2]] * n)[j], "projection_distance": 0.1 * j} for j in range(n)]}


def test_signals_against_hand_formulas():
    # 4 images (classes 0, 0, 1, 1), 2 prototypes (classes 0, 1), a 2x2 grid
    min_d = torch.tensor([[0.0, 1.0], [0.5, 2.0], [3.0, 0.5], [3.0, 3.0]])
    arg = torch.tensor([[0, 3], [0, 3], [3, 3], [3, 3]])
    y, pcls = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])
    doc = _doc([(0, 0), (0, 0)], images=["a", "a"], boxes=[[0, 0, 2, 2], [2, 2, 6, 6]], size=8)
    sig = su.signals(min_d, arg, y, pcls, torch.tensor([1.0, 0.5]), (2, 2), doc, torch.rand(2, 3), k=2)
    from protocli.model import log_similarity

    s = log_similarity(min_d)
    for j in range(2):
        per = [float(s[y == c, j].mean()) for c in (0, 1)]
        p = [v / sum(per) for v in per]
        assert sig["evenness"][j] == pytest.approx(-sum(q * math.log(q) for q in p) / math.log(2), abs=1e-5)
    assert sig["evenness"][1] > sig["evenness"][0]  # #1 fires on both classes, #0 on its own
    assert sig["other"].tolist() == [0.0, 0.5]  # nearest 2 images: 0, 1 (class 0) for #0; 2, 0 for #1
    # both fire at a grid corner of a 2x2 grid: |0.5| / 1 in each direction -> sqrt(.5) / sqrt(2) = .5
    assert sig["border"].tolist() == pytest.approx([0.5, 0.5])
    assert sig["weight"].tolist() == [-1.0, -0.5] and sig["strong"].tolist() == [1.0, 0.5]
    assert sig["duplicate"].tolist() == [1.0, 1.0]  # same image, same cell
    c = 3.5  # centre of an 8-px image; box [0, 0, 2, 2) ends at pixel 1: gap 2.5 in x and y
    assert sig["box_gap"][0] == pytest.approx(math.hypot(2.5, 2.5) / c) and sig["box_gap"][1] == 0
    assert sig["antitype"].tolist() == [0.0, 0.0] and sig["distance"].tolist() == pytest.approx([0.0, 0.1])
    q = torch.zeros(1, 3)
    v = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]])
    sig = su.signals(min_d, arg, y, pcls, torch.ones(2), (2, 2), doc, v, antitypes=q)
    assert sig["antitype"].tolist() == pytest.approx([-1.0, -4.0])


def _edge_loop(pic: np.ndarray, box, k: int, ring: int) -> float:
    """The signal by its definition, one pixel at a time: the largest, over the box's pixels, of the
    k-th smallest RGB distance to an edge pixel outside the box; minus it."""
    S = pic.shape[0]
    x0, y0, x1, y1 = box
    img = pic.astype(np.float64) / 255
    edge = [(y, x) for y in range(S) for x in range(S)
            if (y < ring or y >= S - ring or x < ring or x >= S - ring) and not (y0 <= y < y1 and x0 <= x < x1)]
    worst = 0.0
    for y in range(y0, y1):
        for x in range(x0, x1):
            d = sorted(math.dist(img[y, x], img[ey, ex]) for ey, ex in edge)
            worst = max(worst, d[min(k, len(d)) - 1])
    return -worst


def test_edge_colour_matches_a_loop():
    rng = np.random.default_rng(0)
    S = 24  # ring round(24 / 12) = 2 pixels
    pics = {0: rng.integers(0, 256, (S, S, 3), dtype=np.uint8), 3: rng.integers(0, 256, (S, S, 3), dtype=np.uint8)}
    boxes = [[0, 0, 5, 24], [8, 8, 16, 16], [20, 3, 24, 9], [0, 0, 24, 24]]
    doc = {"img_size": S, "prototypes": [{"image_index": i, "box": b} for i, b in zip([0, 3, 0, 3], boxes, strict=True)]}
    for k in (1, 5):
        got = ec.edge_colour(pics, doc, k=k)
        want = [_edge_loop(pics[p["image_index"]], p["box"], k, 2) for p in doc["prototypes"][:3]]
        assert got[:3].tolist() == pytest.approx(want, abs=1e-5)
        assert got[3] == pytest.approx(-math.sqrt(3))  # the box covers the whole edge: it holds the object


def test_edge_colour_tells_a_grazing_box_from_background():
    S = 24
    pic = np.zeros((S, S, 3), dtype=np.uint8)
    pic[::2] = (40, 90, 200)  # a striped background: two colours, both on the edge
    pic[6:18, 6:18] = (230, 30, 30)  # the object, kept off the edge
    grazing = pic.copy()
    grazing[10:12, 4:6] = (230, 30, 30)  # the object reaches two columns further left, into the strip
    doc = {"img_size": S, "prototypes": [{"image_index": i, "box": [0, 0, 6, 24]} for i in (0, 1)]}
    got = ec.edge_colour({0: pic, 1: grazing}, doc)
    assert got[0] == pytest.approx(0.0, abs=1e-6)  # every colour of the strip is on the edge
    assert got[1] < -0.5  # four red pixels in the strip: no edge pixel outside it is red
    full = _doc([(0, 0), (1, 1)], images=["a", "b"], boxes=[[0, 0, 6, 24]] * 2, size=S)
    for j, p in enumerate(full["prototypes"]):
        p["image_index"] = j
    sig = su.signals(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]), torch.tensor([0, 1]),
                     torch.ones(2), (2, 2), full, torch.rand(2, 3), pictures={0: grazing, 1: pic})
    assert sig["edge_colour"].tolist() == pytest.approx(got.flip(0).tolist())
    assert sig["box_gap"][0] == sig["box_gap"][1]  # the same strip: location cannot tell them apart
    assert su.order(su.score(sig)) == [1, 0]  # the default score can: the plain strip first


def test_edge_colour_shrinks_large_pictures():
    rng = np.random.default_rng(1)
    pic = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    doc = {"img_size": 48, "prototypes": [{"image_index": 0, "box": [0, 4, 10, 30]}]}
    from PIL import Image

    small = np.asarray(Image.fromarray(pic).resize((24, 24), Image.Resampling.BILINEAR))
    # the box scaled to 24 px and rounded outwards: [0, 2, 5, 15]; the ring round(24 / 12) = 2
    assert float(ec.edge_colour({0: pic}, doc, side=24)[0]) == pytest.approx(_edge_loop(small, [0, 2, 5, 15], 5, 2), abs=1e-5)


def test_score_and_order():
    sig = {"border": torch.tensor([0.1, 0.9, 0.5]), "box_gap": torch.tensor([0.0, 1.0, 2.0])}
    s = su.score(sig, ("border", "box_gap"))
    assert s.tolist() == pytest.approx([0.0, 0.75, 0.75])
    assert su.order(s) == [1, 2, 0]  # equal scores keep id order
    with pytest.raises(Exception, match="unknown suspicion signal"):
        su.score(sig, ("nope",))


def test_look_alikes_same_patch_first_then_nearest_within_radius():
    v = np.array([[0, 0], [0.1, 0], [5, 5], [5.2, 5], [9, 0]], dtype=np.float32)
    doc = _doc([(0, 0), (0, 1), (1, 1), (1, 0), (0, 1)], images=["a", "b", "c", "d", "b"])
    # #1 and #4 share the patch (b, [0, 1]): offered first, however far apart their vectors are
    assert su.look_alikes(v, doc, k=3, radius=0.1) == [[1], [4, 0], [3], [2], [1]]
    assert su.look_alikes(v, doc, k=3, radius=0.02) == [[1], [4, 0], [], [], [1]]
    assert su.look_alikes(v, doc, k=1, radius=0.1)[1] == [4]
    # only `offered` ids join beyond the same patch; the same patch always does
    assert su.look_alikes(v, doc, k=3, radius=0.1, offered=[2, 4]) == [[], [4], [], [2], [1]]
    # with scores: only prototypes ranked below, within ceil(window x P) ranks from the offering one.
    # Order by score: 2, 3, 0, 1, 4. #3 may offer #0 and #1 (window 3 ranks: itself, #0, #1), nearest
    # first, not #2 above it; #1 offers #4 on its patch, and #4 offers #1 on its patch though #1 is above
    scores = [0.5, 0.4, 0.9, 0.8, 0.1]
    assert su.look_alikes(v, doc, k=3, radius=1e9, scores=scores, window=0.6) == [[1, 4], [4], [3, 0], [1, 0], [1]]


def test_look_alikes_match_a_loop_with_the_default_radius_and_window():
    rng = np.random.default_rng(0)
    v = rng.random((30, 4), dtype=np.float32)
    doc = _doc([(j % 2, 0) for j in range(30)], images=[f"i{j % 27}" for j in range(30)])
    scores = rng.random(30)
    got = su.look_alikes(v, doc, k=5, scores=scores)
    d = ((v[:, None, :].astype(np.float64) - v[None]) ** 2).sum(2)
    np.fill_diagonal(d, np.inf)
    radius = su.RADIUS_X * np.median(d.min(1))
    rank = {j: r for r, j in enumerate(sorted(range(30), key=lambda j: -scores[j]))}
    width = max(2, -(-su.WINDOW * 30 // 1))
    for i in range(30):
        same = [j for j in range(30) if j != i and doc["prototypes"][j]["image"] == doc["prototypes"][i]["image"]
                and doc["prototypes"][j]["cell"] == doc["prototypes"][i]["cell"]]
        rest = [j for j in np.argsort(d[i], kind="stable") if j != i and j not in same and d[i, j] <= radius
                and 0 < rank[j] - rank[i] < width]
        assert got[i] == (same + rest)[:5]


def test_walk_counts_looks_and_keys():
    flags = [False, True, False, True, True, False]
    la = [[], [3, 2], [], [4], [], []]
    w = walk([0, 1, 2, 3, 4, 5], flags)
    assert (w["looked_90"], w["looked_100"], w["keys"], w["one_key_each"]) == (5, 5, 3, 3)
    w = walk([0, 1, 2, 3, 4, 5], flags, la, shown=8)
    # r on #1 (1 key); offer [3, 2]: sparing #2 and R (2 keys) would cost more than r on #3 later
    # (1 key): walk on. r on #3 (1 key); offer [4], all non-object: R (1 key). Seen: 0, 1, 3, 2, 4
    assert (w["keys"], w["looked_100"], w["rejected_ids"]) == (3, 5, [1, 3, 4])
    la = [[], [3], [], [4], [], []]
    w = walk([0, 1, 2, 3, 4, 5], flags, la)
    assert (w["keys"], w["looked_100"]) == (3, 4)  # r on #1, R on [3] (all shown bad) brings [4]: R again
    w = walk([0, 1, 2, 3, 4, 5], flags, decided={1})
    assert w["non_object_to_find"] == 2 and w["looked_100"] == 4 and w["keys"] == 2
    assert walk([0, 1], [False, False])["looked_90"] is None


def test_walk_spares_the_object_cards_when_that_is_cheaper():
    flags = [False, True, False, True, True, True, False]
    la = [[], [3, 2, 4, 5], [], [6], [], [], []]
    w = walk(list(range(7)), flags, la)
    # r on #1; offer [3, 2, 4, 5]: spare #2 (1 key) + R (1 key) rejects 3, 4, 5; #3 brings #6, an
    # object card alone in the offer: walk on. 3 keys for 4 non-object prototypes
    assert (w["keys"], w["one_key_each"], w["rejected_ids"]) == (3, 4, [1, 3, 4, 5])
    assert w["looked_100"] == 6 and w["looked_total"] == 7
    w = walk(list(range(7)), flags, la, shown=2)  # a narrow terminal: the offer shows [3, 2] first
    # [3, 2]: spare + R = 2 keys > 1: walk on; r on #3 -> offer [6]: walk on; r on #4, r on #5
    assert w["keys"] == 4


def test_offer_counts_only_undecided_look_alikes():
    from protocli.effort import PER_REJECT, fresh

    cands = list(range(1, 13))
    assert fresh(cands, lambda o: False) == cands[:PER_REJECT]
    # decided candidates are skipped before counting: the next undecided ones take their slots
    assert fresh(cands, lambda o: o in {1, 2, 3}) == cands[3:3 + PER_REJECT]
    # the walk: #1-#3 carry a verdict over, the rest are non-object. r on #0 offers #4-#11: R rejects
    # them (2 keys), r on #12 (1 key). Counting the decided ones would offer #4-#8 only: 6 keys
    la = [cands] + [[] for _ in range(12)]
    w = walk(list(range(13)), [True] * 13, la, decided={1, 2, 3})
    assert (w["keys"], w["one_key_each"], w["rejected_ids"]) == (3, 10, [0, *range(4, 13)])


@pytest.mark.parametrize("order,la", [("suspicion", True), ("id", False)])
def test_simulate_reports_effort_and_same_decisions(tiny_run, order, la):
    args = ["simulate", str(tiny_run), "--order", order, "--json", "-q"] + (["--look-alikes"] if la else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["order"] == order and d["look_alikes"] is la
    assert d["non_object_to_find"] == d["rejected"] == d["one_key_each"] and d["keys"] <= d["clicks"]
    if d["rejected"]:
        assert 0 < d["looked_90"] <= d["looked_100"] <= d["prototypes"]
    push = sorted((tiny_run / "stages").glob("*-push"))[-1]
    if order == "suspicion":
        doc = json.loads((push / su.FILE).read_text())
        assert len(doc["score"]) == d["prototypes"] and doc["signals_used"] == list(su.DEFAULT)
        # the written offers follow the rule: the same patch, or ranked just below in suspicion order
        rank = {j: r for r, j in enumerate(su.order(doc["score"]))}
        patch = su.patch_ids(json.loads((push / "prototypes.json").read_text()))
        width = max(2, -(-su.WINDOW * d["prototypes"] // 1))
        assert any(doc["look_alikes"])
        for i, offers in enumerate(doc["look_alikes"]):
            assert all(patch[j] == patch[i] or 0 < rank[j] - rank[i] < width for j in offers)


def test_mask_effect_matches_the_model_and_is_fast(tiny_run):
    from protocli.cache import min_distances, run_latents
    from protocli.effect import MaskEffect, describe
    from protocli.metrics import accuracy_from_min_d
    from protocli.run import Run

    eff = MaskEffect(tiny_run)
    run = Run.open(tiny_run)
    model = run.load_model("cpu")
    _, _, zte, yte = run_latents(run, model, run.cub(), torch.device("cpu"))
    md = min_distances(model, zte, torch.device("cpu"))
    assert eff.before == pytest.approx(accuracy_from_min_d(model, md, yte))
    with torch.no_grad():
        model.prototype_mask[[0, 3]] = 0
    e = eff([0, 3])
    assert e["accuracy_masked"] == pytest.approx(accuracy_from_min_d(model, md, yte))
    assert e["seconds"] < 1.0 and 0 < e["refit_steps"] <= eff.steps and e["masked"] == 2
    assert describe(e).startswith("mask 2: test ")
    none = eff([])
    assert describe(none) == f"test {eff.before:.3f}, nothing masked".replace("0.", ".", 1)
    assert none["accuracy_refit"] == none["accuracy_masked"] == eff.before and none["refit_steps"] == 0
    assert eff([0], cancelled=lambda: True) is None


def test_load_ignores_a_damaged_or_foreign_suspicion_file(tmp_path):
    ok = {"version": su.VERSION, "signals_used": list(su.DEFAULT), "offer_rule": su.OFFER_RULE,
          "score": [0.1, 0.2], "look_alikes": [[], []]}
    (tmp_path / su.FILE).write_text(json.dumps(ok))
    assert su.load(tmp_path, 2) == ok
    assert su.load(tmp_path, 3) is None  # another push's size
    for bad in ("{not json", json.dumps({**ok, "signals_used": ["weight"]}), json.dumps({**ok, "offer_rule": [1, 1]}),
                json.dumps([1, 2])):
        (tmp_path / su.FILE).write_text(bad)
        assert su.load(tmp_path, 2) is None  # a cache: computed again, never an error


def test_check_cancel_only_where_a_check_is_installed():
    from protocli.cache import min_distances
    from protocli.console import Cancelled, cancellable, check_cancel
    from protocli.model import ModelConfig, build_model

    check_cancel()  # no check installed: nothing happens
    model = build_model(ModelConfig(backbone="tiny", num_classes=2, prototypes_per_class=1, proto_dim=4, img_size=32))
    z = torch.rand(5, 4, 2, 2)
    with cancellable(lambda: False):
        assert min_distances(model, z, torch.device("cpu"), batch_size=2).shape == (5, 2)
    with cancellable(lambda: True), pytest.raises(Cancelled):
        min_distances(model, z, torch.device("cpu"), batch_size=2)
    check_cancel()  # the block restored the previous state
    # the edge colour loop polls it too: closing the review must not wait for 2000 boxes
    pic = np.zeros((12, 12, 3), dtype=np.uint8)
    doc = {"img_size": 12, "prototypes": [{"image_index": 0, "box": [0, 0, 4, 4]}]}
    with cancellable(lambda: False):
        assert ec.edge_colour({0: pic}, doc).shape == (1,)
    with cancellable(lambda: True), pytest.raises(Cancelled):
        ec.edge_colour({0: pic}, doc)
