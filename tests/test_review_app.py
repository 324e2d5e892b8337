"""The review app under Pilot: keys -> antitypes.json and state, the detail view, help, text snapshots
at 80x24, Kitty/Sixel-style picture widgets, and speed on 2000 prototypes. Renderers are explicit,
never auto (auto would probe the terminal and, under `pytest -s`, could write Kitty escapes)."""

from __future__ import annotations

import json
import statistics

import pytest
from _reviewutil import make_push, screen_lines

from protocli.review.app import ReviewApp
from protocli.review.pictures import Renderer, make_renderer
from protocli.review.state import open_state
from protocli.review.widgets import HelpScreen


def decided(run) -> dict:
    data = json.loads((run / "antitypes.json").read_text())
    return {d["prototype"]: d["verdict"] for d in data["decisions"]}


@pytest.fixture
def run(tmp_path):
    make_push(tmp_path / "run", P=30, k=3)
    return tmp_path / "run"


async def test_keys_save_every_decision(run):
    st = open_state(run)
    app = ReviewApp(st, make_renderer("halfcell"))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.gallery.grid == (5, 2)  # 10 cards with pictures fit 80x24
        await pilot.press("r", "a", "l", "r")
        assert decided(run) == {0: "reject", 1: "accept", 3: "reject"} and st.cursor == 4
        await pilot.press("u")
        assert decided(run) == {0: "reject", 1: "accept"} and st.cursor == 3
        await pilot.press("j", "down", "k", "h", "left", "up")  # +5 +5 -5 -1 -1 -5
        assert st.cursor == 1
        await pilot.press("home", "space")
        assert st.current.id == 2
        await pilot.press("pagedown", "pagedown")
        assert st.cursor == 22 and app.page_start == 20
        await pilot.press("end", "pageup")
        assert st.cursor == 19
        await pilot.press("s")
        assert st.sort == "class"
        await pilot.press("f")
        assert st.filter_class == 1 and len(st.order) == 10
        await pilot.press("F")
        assert st.filter_class == 2
        await pilot.press("f")
        assert st.filter_class is None
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert app.gallery.grid == (7, 3) and app.page_start == 0  # cursor 19 is on the first page now
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("r")  # any key closes help and decides nothing
        assert not isinstance(app.screen, HelpScreen) and len(decided(run)) == 2
        await pilot.press("q")
    assert app.return_value == {"push": "002-push", "total": 30, "reviewed": 2, "rejected": 1, "accepted": 1,
                                "file": str(run / "antitypes.json")}
    assert open_state(run).counts()["reviewed"] == 2  # reopening restores every decision


async def test_detail_view_and_gallery_snapshot(run):
    st = open_state(run)
    app = ReviewApp(st, make_renderer("halfcell"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        lines = screen_lines(app.export_screenshot())
        assert len(lines) == 24
        text = "\n".join(lines)
        assert "#0  w +1.00" in text and "✗ reject" in text and "#9  w +1." in text and "#10 " not in text
        assert "reviewed 1/30  rejected 1  accepted 0" in lines[22] and "002-push" in lines[22]
        assert "antitypes.json" in lines[22]
        assert "▀" in text  # half-block pictures arrived from the loading thread

        await pilot.press("tab")
        assert app.in_detail and app.detail.proto.id == 1
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.detail.image._strips and app.detail.near_pics[0]._strips
        text = "\n".join(screen_lines(app.export_screenshot()))
        for label in ("prototype #1", "training image + box", "similarity heatmap", "nearest after push",
                      "projection distance",
                      "002.[odd]_bird", "image 001.bird_0/img_0001.png"):
            assert label in text
        await pilot.press("l", "r")  # keys work in the detail view too
        assert decided(run) == {0: "reject", 2: "reject"} and app.detail.proto.id == 3
        await pilot.press("tab")
        assert not app.in_detail and app.gallery.display


async def test_text_only_and_textual_image_widgets(run):
    import textual_image.widget as tiw

    for renderer in (make_renderer("none"), Renderer("sixel", tiw.SixelImage, (10, 20)),
                     Renderer("unicode", tiw.UnicodeImage, (10, 20))):
        st = open_state(run)
        app = ReviewApp(st, renderer)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("a", "tab", "r", "x", "tab", "pagedown")  # x: no look-alike row
            await app.workers.wait_for_complete()
            await pilot.pause()
            if renderer.kind == "none":
                assert app.gallery.grid == (5, 4) and not app.gallery.overlays
            else:
                assert len(app.gallery.overlays) == 10
                assert app.gallery.overlays[0].image is not None  # picture of the card on the new page
            await pilot.press("q")
        assert len(decided(run)) == 2


def write_suspicion(push, scores, look_alikes) -> None:
    from protocli.suspicion import DEFAULT, OFFER_RULE, VERSION

    (push / "suspicion.json").write_text(json.dumps({"version": VERSION, "push": push.name, "score": scores,
                                                     "signals_used": list(DEFAULT), "offer_rule": OFFER_RULE,
                                                     "look_alikes": look_alikes}))


async def test_2000_prototypes_first_screen_and_key_latency(tmp_path):
    push = make_push(tmp_path / "run", P=2000, K=200, D=128, k=1)
    write_suspicion(push, [(j * 7919) % 2000 / 2000 for j in range(2000)],
                    [[(j + 1) % 2000, (j + 2) % 2000] for j in range(2000)])
    st = open_state(tmp_path / "run")
    st.set_sort("suspicion")  # as `protocli review --order suspicion`
    app = ReviewApp(st, make_renderer("halfcell"))
    app.thumbs.capacity = 60  # small, so paging must evict
    async with app.run_test(size=(120, 40)) as pilot:
        keys = ["l", "j", "r", "R", "x", "a", "u", "space", "pagedown", "pagedown", "s", "f", "f", "tab", "l", "tab"]
        await pilot.press(*keys, *["pagedown"] * 6)
        await pilot.pause()
        assert app.first_screen_s is not None and app.first_screen_s < 1.5
        lat = list(app.latencies)
        assert len(lat) >= len(keys) and statistics.median(lat) < 0.15
        assert len(app.thumbs._items) <= app.thumbs.capacity  # memory stays bounded
        await pilot.press("q")


async def test_suspicion_order_and_look_alike_offers(tmp_path):
    push = make_push(tmp_path / "run", P=30, k=1)
    scores = [0.0] * 30
    scores[4], scores[0] = 1.0, 0.9
    look = [[] for _ in range(30)]
    look[4], look[5], look[7] = [5, 7], [4, 9], [4]
    write_suspicion(push, scores, look)
    st = open_state(tmp_path / "run")
    assert st.suspicion is not None and st.sort == "id"
    app = ReviewApp(st, make_renderer("halfcell"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        assert st.sort == "suspicion" and st.order[:2] == [4, 0] and st.order[2:] == [j for j in range(30)
                                                                                     if j not in (0, 4)]
        assert st.current.id == 0  # the cursor stays on its card
        await pilot.press("home", "r")  # #4: its look-alikes #5 and #7 are offered in a row
        await pilot.pause()
        assert st.offers.shown == [5, 7] and app.offer.display
        assert st.offers.room == 7  # 120 columns hold 7 cards: R rejects no card that is not on screen
        text = "\n".join(screen_lines(app.export_screenshot()))
        assert "look-alikes of #4: R rejects the 2 marked" in text and "#5  w" in text and "#7  w" in text
        assert "1 ✗ on R" in text and "2 ✗ on R" in text
        await pilot.press("2")  # spare #7
        await pilot.pause()
        assert st.offers.marked == [5] and "R rejects the 1 marked" in "\n".join(screen_lines(app.export_screenshot()))
        await pilot.press("2", "2")  # marked again, spared again
        assert st.offers.spared == {7}
        await pilot.press("R")  # rejects #5 only; #7 leaves the row, #5's look-alike #9 joins it
        await pilot.pause()
        assert decided(tmp_path / "run") == {4: "reject", 5: "reject"} and st.offers.shown == [9]
        await pilot.press("R")
        assert decided(tmp_path / "run") == {4: "reject", 5: "reject", 9: "reject"}
        assert st.offers.ids == []
        await pilot.pause()
        assert not app.offer.display
        await pilot.press("u")  # undo takes back the last reject, one at a time
        assert 9 not in decided(tmp_path / "run")
        await pilot.press("home", "r")  # r on #4 again: #5 is decided, #7 was spared and is offered again
        assert st.offers.shown == [7]
        await pilot.press("3")  # no such card: a message, nothing else
        assert st.offers.spared == set() and "no look-alike 3" in st.message
        await pilot.press("x")
        assert st.offers.ids == [] and st.current.id == 0
        await pilot.press("q")


async def test_status_line_shows_the_masking_effect(tiny_run):
    import asyncio

    st = open_state(tiny_run)
    app = ReviewApp(st, make_renderer("none"))
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(200):  # the model and latents load in a worker after the first screen
            if app.effect is not None:
                break
            await asyncio.sleep(0.05)
        assert app.effect is not None
        await pilot.press("r")
        t0 = asyncio.get_running_loop().time()
        while "mask 1: test" not in app.effect_text and asyncio.get_running_loop().time() - t0 < 5:
            await pilot.pause(0.02)
        assert "mask 1: test" in app.effect_text
        assert asyncio.get_running_loop().time() - t0 < 1.0  # the cost of a reject, within a second
        text = "\n".join(screen_lines(app.export_screenshot()))
        assert "mask 1: test" in text
        await pilot.press("q")


async def test_no_picture_under_the_help_and_the_footer_on_first_paint(run):
    """Sixel pictures live in the terminal: under a modal they must be hidden, or xterm paints them
    over its text. And the footer has readable text (colour != background) on the first screen."""
    import textual_image.widget as tiw

    app = ReviewApp(open_state(run), Renderer("sixel", tiw.SixelImage, (10, 20)))
    async with app.run_test(size=(120, 36)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        footer = [s for s in app.screen._compositor.render_strips()[34] if s.text.strip()]
        assert "reviewed 0/30" in footer[0].text
        assert footer[0].style.color != footer[0].style.bgcolor  # a blank bar in xterm before the fix
        pictures = app.picture_widgets()
        assert len(pictures) == 21 + 2 + 5 and all(p.display for p in app.gallery.overlays)
        assert all(p.image is not None for p in app.gallery.overlays[:21])
        for view in ("gallery", "detail"):
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            assert not any(p.display or p.is_on_screen for p in app.picture_widgets())
            if view == "gallery":  # a resize under the help re-creates the overlays: still hidden
                await pilot.resize_terminal(104, 36)
                await pilot.pause()
                assert app.gallery.grid == (6, 3)
                assert not any(p.display or p.is_on_screen for p in app.picture_widgets())
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
            shown = app.detail.near_pics[:3] if view == "detail" else app.gallery.overlays
            assert all(p.display and p.is_on_screen for p in shown)
            await pilot.press("tab")
        await pilot.press("q")


async def test_quitting_does_not_wait_for_the_background_loaders(tmp_path, monkeypatch):
    # Thread workers run in the event loop's executor, which asyncio.run joins at exit: a loader
    # that ignored the cancel would keep `q` waiting for it (at CUB size, tens of seconds).
    import threading
    import time

    from protocli import suspicion
    from protocli.console import check_cancel

    started, stopped = threading.Event(), threading.Event()

    def slow_scores(*args, **kwargs):
        started.set()
        try:
            for _ in range(1000):  # 10 s unless cancelled
                check_cancel()
                time.sleep(0.01)
        finally:
            stopped.set()

    monkeypatch.setattr(suspicion, "ensure", slow_scores)
    make_push(tmp_path / "run", P=12)
    app = ReviewApp(open_state(tmp_path / "run"), make_renderer("none"))
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(100):  # the scores start after the first screen, asked for or not
            if started.is_set():
                break
            await pilot.pause(0.02)
        assert started.is_set()
        await pilot.press("q")
    assert stopped.wait(2.0)



def test_help_fits_an_80x24_terminal():
    from rich.cells import cell_len

    from protocli.review.widgets import HELP

    lines = HELP.splitlines()
    assert len(lines) + 2 <= 24  # inside its border
    assert max(cell_len(line) for line in lines) <= 80 - 4  # border and padding each side
