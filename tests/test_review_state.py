"""Review state without a terminal: decisions saved at once, undo, moving, filter, sort, carry-over,
read-only earlier pushes, the entry function's errors, and thumbnails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _reviewutil import make_push
from PIL import Image

from protocli.errors import BadInput
from protocli.review import review
from protocli.review.pictures import Renderer, Thumbnails, fit, resolve_graphics
from protocli.review.state import open_state

ROOT = Path(__file__).resolve().parents[1]


def saved(run: Path) -> dict:
    return json.loads((run / "antitypes.json").read_text())


def test_decisions_are_saved_at_once_and_restored(tmp_path):
    run = tmp_path / "run"
    make_push(run, pictures=False)
    st = open_state(run)
    assert not (run / "antitypes.json").exists()  # opening alone writes nothing
    assert st.decide("reject") and st.cursor == 1
    assert st.decide("accept")
    data = saved(run)
    assert [(d["prototype"], d["verdict"], d["by"]) for d in data["decisions"]] == [(0, "reject", "user"),
                                                                                  (1, "accept", "user")]
    assert data["antitypes"][0]["vector"] == pytest.approx(st.vectors[0].tolist())
    again = open_state(run)
    assert again.counts() == {"total": 12, "reviewed": 2, "rejected": 1, "accepted": 1}
    assert again.summary()["file"] == str(run / "antitypes.json")


def test_undo_restores_what_a_decision_replaced(tmp_path):
    run = tmp_path / "run"
    make_push(run, pictures=False)
    st = open_state(run)
    st.decide("reject")
    st.goto(0)
    st.decide("accept")
    st.goto(5)
    assert st.undo() and st.cursor == 0 and st.decision(0)["verdict"] == "reject"
    assert st.undo() and st.decision(0) is None and saved(run)["antitypes"] == []
    assert not st.undo() and st.message == "nothing to undo"
    st.decide("reject")
    fresh = open_state(run)  # a new session has no history: u clears the current card
    assert fresh.undo() and fresh.decision(0) is None


def test_move_next_undecided_filter_sort(tmp_path):
    run = tmp_path / "run"
    make_push(run, pictures=False)
    st = open_state(run)
    st.move(-5)
    assert st.cursor == 0
    st.move(100)
    assert st.cursor == 11
    st.goto(0)
    st.decide("accept")
    st.decide("accept")
    st.goto(0)
    assert st.next_undecided() and st.current.id == 2
    st.goto(5)
    st.toggle_filter()  # prototypes 4..7 are class 1
    assert st.order == [4, 5, 6, 7] and st.current.id == 5 and st.message == "showing 4 of 12 prototypes"
    assert st.class_label(1) == "002.[odd]_bird"
    st.next_class()
    assert st.filter_class == 2 and st.order == [8, 9, 10, 11]
    st.toggle_filter()
    assert st.filter_class is None and len(st.order) == 12
    weights = [st.protos[j].weight for j in st.order]
    assert st.cycle_sort() == "class" and st.order == sorted(st.order, key=lambda j: (st.protos[j].cls, j))
    assert st.cycle_sort() == "weight"
    assert [st.protos[j].weight for j in st.order] == sorted(weights, reverse=True)
    assert st.cycle_sort() == "undecided" and st.order[:10] == list(range(2, 12))
    assert st.cycle_sort() == "id"


def test_carry_over_between_pushes(tmp_path):
    run = tmp_path / "run"
    make_push(run, "002-push", pictures=False)
    st = open_state(run)
    for _ in range(4):
        st.decide("reject")  # 0..3
    make_push(run, "005-push", moved=(1, 3), pictures=False)
    st2 = open_state(run)
    assert st2.push == "005-push" and "2 decisions carried" in st2.message
    assert st2.antitypes.decided("005-push") == {0: "reject", 2: "reject"}
    data = saved(run)
    assert data["push"] == "005-push"
    assert len(data["antitypes"]) == 4  # same vectors: Q is not padded with copies
    # Undo a carried decision; reopening must not bring it back.
    st2.goto(0)
    st2.undo()
    assert open_state(run).decision(0) is None
    old = open_state(run, "002-push")
    assert old.read_only and not old.decide("accept") and "read-only" in old.message


def test_failed_write_keeps_file_and_memory_in_step(tmp_path):
    run = tmp_path / "run"
    make_push(run, pictures=False)
    st = open_state(run)
    st.antitypes_path = tmp_path / "dir_in_the_way"
    st.antitypes_path.mkdir()
    assert not st.decide("reject")
    assert st.decision(0) is None and st.antitypes.antitypes == [] and "could not write" in st.message


def test_entry_errors(tmp_path):
    with pytest.raises(BadInput, match="manifest.json: run manifest not found"):
        review(tmp_path)  # a folder without a manifest is not a run
    (tmp_path / "manifest.json").write_text('{"version": 1, "stages": []}')
    with pytest.raises(BadInput, match="protocli push RUN"):
        review(tmp_path)
    make_push(tmp_path / "run", pictures=False)
    with pytest.raises(BadInput, match="'009-push' not found"):
        review(tmp_path / "run", push="009-push")
    with pytest.raises(BadInput, match="--graphics"):
        review(tmp_path / "run", graphics="ascii")
    (tmp_path / "run" / "antitypes.json").write_text("{broken")
    with pytest.raises(BadInput, match="antitypes.json: not valid JSON"):
        open_state(tmp_path / "run")
    assert (tmp_path / "run" / "antitypes.json").read_text() == "{broken"


def test_not_a_terminal_fails_fast_with_one_line(tmp_path):
    make_push(tmp_path / "run", pictures=False)
    code = "import sys; from protocli.review.__main__ import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: protocli review needs a terminal, but stdin is not a TTY"]
    assert not (tmp_path / "run" / "antitypes.json").exists()


def test_graphics_choice():
    assert resolve_graphics("auto", {"TERM": "xterm-256color", "TMUX": "/tmp/t,1,0"}) == "halfcell"
    assert resolve_graphics("auto", {"TERM": "xterm-256color", "SSH_CONNECTION": "a b c d"}) == "halfcell"
    assert resolve_graphics("auto", {"TERM": "dumb"}) == "none"
    assert resolve_graphics("auto", {"TERM": "xterm-kitty"}) == "auto"
    assert resolve_graphics("sixel", {"TMUX": "x"}) == "sixel"  # an explicit choice is obeyed
    with pytest.raises(ValueError):
        resolve_graphics("ascii")


def test_box_survives_half_block_size():
    img = Image.new("RGB", (224, 224), (0, 0, 0))
    small = np.asarray(fit(img, 12, 12, box=(30, 30, 33, 200)))  # a 3-px wide box on 224 px
    assert small.shape == (12, 12, 3)
    assert (small[2:10, 2, 1] == 255).all()  # still a line after an 18x downscale


def test_thumbnail_cache_is_bounded(tmp_path):
    push = make_push(tmp_path / "run", P=30)
    th = Thumbnails(push, Renderer("halfcell"), capacity=10)
    for j in range(30):
        assert th.get("patch", j, 12, 6).size == (12, 12)
    assert len(th._items) == 10 and th.cached(("patch", 29, 0, 12, 6)) is not None
    assert th.get("nearest", 0, 6, 3, k=9) is None  # missing picture: no crash, no entry


def test_an_offer_fills_its_row_with_undecided_look_alikes(tmp_path):
    """Decided prototypes are skipped before the row's eight slots are counted, as in effort.walk."""
    from protocli.suspicion import DEFAULT, OFFER_RULE, VERSION

    run = tmp_path / "run"
    push = make_push(run, P=30, k=1, pictures=False)
    look = [[] for _ in range(30)]
    look[4] = [1, 2, 3, *range(5, 16)]
    (push / "suspicion.json").write_text(json.dumps({
        "version": VERSION, "push": push.name, "score": [0.0] * 30, "signals_used": list(DEFAULT),
        "offer_rule": OFFER_RULE, "look_alikes": look}))
    st = open_state(run)
    for j in (1, 2, 3):  # accepted first
        st.goto(st.order.index(j))
        st.decide("accept")
    st.goto(st.order.index(4))
    st.decide("reject")
    assert st.offers.shown == list(range(5, 13))
    assert st.offers.reject() == 8
    verdicts = {d["prototype"]: d["verdict"] for d in saved(run)["decisions"]}
    assert [j for j, v in sorted(verdicts.items()) if v == "reject"] == list(range(4, 13))
