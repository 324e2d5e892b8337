"""The review app: keys -> ReviewState; state -> a virtualised gallery, a detail view, a status bar.

Inputs: a `ReviewState` (state.py) and a `Renderer` (pictures.py). Output: the state's
antitypes.json, written by the state on every decision; `App.run()` returns the summary dict.

Speed: the gallery (gallery.py) holds one page of card slots, as many as fit the terminal;
paging re-binds the slots to other prototypes instead of mounting widgets, and pictures arrive
from worker threads through a bounded LRU, so 2000 prototypes cost what one page costs.
"""

from __future__ import annotations

import time
from collections import deque
from functools import partial
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.worker import get_current_worker

from protocli.effort import SHOWN
from protocli.review.background import BackgroundWork
from protocli.review.detail import Detail
from protocli.review.gallery import CARD_W, PIC, Gallery, card_height
from protocli.review.pictures import Renderer, Thumbnails
from protocli.review.state import ReviewState
from protocli.review.widgets import HelpScreen, StatusBar, converter


def short_path(path: Path) -> str:
    """The file being written, relative to the working folder when inside it (fits 80 columns)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class ReviewApp(BackgroundWork, App):
    TITLE = "protocli review"
    CSS = """
    Screen { layout: vertical; }
    Gallery { height: 1fr; }
    Detail { height: 1fr; display: none; }
    Detail #top { height: auto; }
    Detail .bigbox { width: auto; height: auto; margin-right: 1; }
    Detail .cap { color: $text-muted; }
    Detail #info { width: 1fr; height: auto; }
    Detail #nearest { height: auto; }
    Detail .near { width: auto; height: auto; margin-right: 1; }
    Detail .nearcap { height: 2; color: $text-muted; }
    StatusBar { height: 2; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    #offer { display: none; border-top: solid $accent; }
    """
    BINDINGS = [Binding(k, a, show=False, priority=True) for k, a in [
        ("left,h", "move(-1)"), ("right,l", "move(1)"), ("up,k", "move_rows(-1)"),
        ("down,j", "move_rows(1)"), ("pageup", "move_pages(-1)"), ("pagedown", "move_pages(1)"),
        ("home", "move(-1000000)"), ("end", "move(1000000)"),
        ("r", "decide('reject')"), ("a", "decide('accept')"), ("u", "undo"),
        ("space", "next_undecided"), ("f", "filter"), ("F", "next_class"), ("s", "sort"),
        ("tab", "toggle_view"), ("question_mark", "help"), ("q,ctrl+c", "quit"),
        ("R", "offer_reject"), ("x,escape", "dismiss_offer"),
    ]] + [Binding(str(n), f"offer_spare({n - 1})", show=False, priority=True) for n in range(1, SHOWN + 1)]

    def __init__(self, state: ReviewState, renderer: Renderer, thumbnails: Thumbnails | None = None):
        super().__init__()
        self.state = state
        self.renderer = renderer
        self.thumbs = thumbnails or Thumbnails(state.push_dir, renderer, convert=converter(renderer))
        self.page_start = -1
        self.started = time.perf_counter()
        self.first_screen_s: float | None = None  # measured: app start -> first page of cards drawn
        self.latencies: deque[float] = deque(maxlen=256)  # measured: key action -> screen refreshed
        self.gallery = Gallery(renderer, id="gallery")
        self.detail = Detail(renderer, id="detail")
        self.offer = Gallery(renderer, id="offer")  # the look-alikes offered after a reject: one row
        self.offer.styles.height = card_height(renderer) + 1
        self.status = StatusBar("", markup=False, id="status")
        self.file_label = short_path(state.antitypes_path)
        self.run_dir = state.push_dir.parent.parent
        self.effect = None        # effect.MaskEffect once loaded (worker thread), else None
        self.effect_text = ""     # what masking the current rejects would do, for the status bar
        self._effect_for: list[int] | None = None
        self._suspicion_started = False

    def compose(self) -> ComposeResult:
        yield self.gallery
        yield self.detail
        yield self.offer
        yield self.status

    def on_mount(self) -> None:
        # An inline colour for the footer: with Sixel pictures Textual 8.2 painted the bar while the
        # stylesheet was being applied again (the App's `color` rule absent for that moment) and kept
        # that style, text at alpha 0; in xterm the footer was a blank bar until something restyled
        # it. Inline styles are not touched by the stylesheet.
        self.status.styles.color = self.theme_variables.get("foreground", "white")
        self.redraw()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # The bindings are priority bindings (so tab is ours, not focus-next); while the help screen
        # is up they must stand aside, or a key pressed to close it would also decide something.
        return not isinstance(self.screen, HelpScreen)

    # -- drawing -----------------------------------------------------------------------------------
    @property
    def in_detail(self) -> bool:
        return bool(self.detail.display)

    def redraw(self, force: bool = False) -> None:
        s = self.state
        filt = "all classes" if s.filter_class is None else f"class {s.class_label(s.filter_class)}"
        s.offers.room = max(1, min(SHOWN, (self.size.width or SHOWN * CARD_W) // CARD_W))  # one row of cards
        shown = s.offers.shown
        if shown:  # the row says what its keys do, on its own top border
            self.offer.border_title = (f"look-alikes of #{s.offers.of}: R rejects the {len(s.offers.marked)} "
                                       f"marked · 1-{len(shown)} spare one · x dismiss")
        self.status.set(s.counts(), s.push, s.sort, filt, self.file_label, s.message, s.read_only,
                        self.effect_text)
        self.redraw_offer(shown)
        page = 0 if self.in_detail else self.gallery.page_size  # a hidden gallery waits for tab
        if page:
            start = (s.cursor // page) * page
            page_moved = force or start != self.page_start
            self.page_start = start
            for i in range(page):
                pos = start + i
                proto = s.protos[s.order[pos]] if pos < len(s.order) else None
                thumb = self.thumbs.cached(("patch", proto.id, 0, *PIC)) if proto and page_moved else None
                self.gallery.bind(i, proto, s.decision(proto.id) if proto else None, pos == s.cursor, thumb)
            if page_moved:
                self.load_gallery()
            if self.first_screen_s is None:
                self.call_after_refresh(self._first_screen)
        if self.in_detail:
            p = s.current
            moved = p is not self.detail.proto
            self.detail.bind(p, s.decision(p.id) if p else None, s.class_label)
            if moved:
                self.load_detail()

    def _first_screen(self) -> None:
        if self.first_screen_s is None:
            self.first_screen_s = time.perf_counter() - self.started
            self.start_effect()
            if self.state.suspicion is None and not self.state.read_only:
                # the look-alike offers need the scores; asked for or not, they are ready by the first reject
                self.start_suspicion()

    def redraw_offer(self, shown: list[int]) -> None:
        if bool(shown) != bool(self.offer.display):
            self.offer.display = bool(shown)  # the gallery gives up a row; its resize redraws
        if not shown or not self.offer.page_size:
            return
        s = self.state
        ids = []
        for i in range(self.offer.page_size):
            proto = s.protos[shown[i]] if i < len(shown) else None
            new = proto is not self.offer.protos[i]
            thumb = self.thumbs.cached(("patch", proto.id, 0, *PIC)) if proto and new else None
            # an offered card is undecided: it shows its key and whether R would reject it
            mark = ({"verdict": "spared" if proto.id in s.offers.spared else "marked", "by": str(i + 1)}
                    if proto else None)
            self.offer.bind(i, proto, mark, False, thumb)
            if proto is not None and new:
                ids.append(proto.id)
        if ids and self.renderer.pictures:
            self.run_worker(partial(self._load_patches, ids, [], self.offer), thread=True, group="offer",
                            exclusive=True, exit_on_error=False)

    # -- pictures (worker threads; the UI thread only swaps finished thumbnails in) -----------------
    def load_gallery(self) -> None:
        if not self.renderer.pictures:
            return
        page = self.gallery.page_size
        ids = [p.id for p in self.gallery.protos if p is not None]
        ahead = self.state.order[self.page_start + page:self.page_start + 2 * page]
        self.run_worker(partial(self._load_patches, ids, ahead), thread=True, group="gallery",
                        exclusive=True, exit_on_error=False)

    def _load_patches(self, ids: list[int], ahead: list[int], target: Gallery | None = None) -> None:
        worker = get_current_worker()
        batch, last = [], time.perf_counter()
        for j in ids:
            if worker.is_cancelled:
                return
            thumb = self.thumbs.get("patch", j, *PIC)
            if thumb is not None:
                batch.append((j, thumb))
            # Hand over in batches: one repaint per ~50 ms instead of one per picture.
            if batch and time.perf_counter() - last > 0.05:
                if not self._deliver(self._show_patches, batch, target):
                    return
                batch, last = [], time.perf_counter()
        if batch and not self._deliver(self._show_patches, batch, target):
            return
        for j in ahead:  # warm the cache for the next page: paging then feels instant
            if worker.is_cancelled:
                return
            self.thumbs.get("patch", j, *PIC)

    def _show_patches(self, batch: list[tuple[int, object]], target: Gallery | None = None) -> None:
        for j, thumb in batch:
            (target or self.gallery).show_picture(j, thumb)

    def load_detail(self) -> None:
        wanted = self.detail.wanted()
        if wanted:
            self.run_worker(partial(self._load_detail, self.detail.proto.id, wanted), thread=True,
                            group="detail", exclusive=True, exit_on_error=False)

    def _load_detail(self, j: int, wanted: list[tuple]) -> None:
        worker = get_current_worker()
        for widget, kind, k, cols, rows, box in wanted:
            if worker.is_cancelled:
                return
            thumb = self.thumbs.get(kind, j, cols, rows, box, k)
            if not self._deliver(self._show_detail, j, widget, thumb):
                return

    def _show_detail(self, j: int, widget, thumb) -> None:
        if self.detail.proto is not None and self.detail.proto.id == j:
            widget.show(thumb)

    def _deliver(self, fn, *args) -> bool:
        try:
            self.call_from_thread(fn, *args)
            return True
        except Exception:  # the app is closing: nobody is left to show the picture
            return False

    # -- actions -----------------------------------------------------------------------------------
    def _act(self, fn, *args) -> None:
        t0 = time.perf_counter()
        self.state.message = ""
        fn(*args)
        self.redraw()
        self.update_effect()
        if self.state.want_suspicion:  # the state switches the order when the scores arrive
            self.start_suspicion()
        self.call_after_refresh(lambda: self.latencies.append(time.perf_counter() - t0))

    def action_move(self, delta: int) -> None:
        self._act(self.state.move, delta)

    def action_move_rows(self, rows: int) -> None:
        cols = 1 if self.in_detail else max(1, self.gallery.grid[0])
        self._act(self.state.move, rows * cols)

    def action_move_pages(self, pages: int) -> None:
        self._act(self.state.move, pages * max(1, self.gallery.page_size))

    def action_decide(self, verdict: str) -> None:
        self._act(self.state.decide, verdict)

    def action_undo(self) -> None:
        self._act(self.state.undo)

    def action_next_undecided(self) -> None:
        self._act(self.state.next_undecided)

    def action_filter(self) -> None:
        self._act(self.state.toggle_filter)

    def action_next_class(self) -> None:
        self._act(self.state.next_class)

    def action_sort(self) -> None:
        self._act(self.state.cycle_sort)

    def action_offer_reject(self) -> None:
        self._act(self.state.offers.reject)

    def action_offer_spare(self, index: int) -> None:
        self._act(self.state.offers.spare, index)

    def action_dismiss_offer(self) -> None:
        self._act(self.state.offers.dismiss)

    def action_toggle_view(self) -> None:
        t0 = time.perf_counter()
        show_detail = not self.in_detail
        self.detail.display = show_detail
        self.gallery.display = not show_detail
        if show_detail:
            self.detail.resize_to(self.size.width, max(1, self.size.height - 2))
            self.detail.proto = None  # force a fresh bind and picture load
        self.redraw(force=not show_detail)
        self.call_after_refresh(lambda: self.latencies.append(time.perf_counter() - t0))

    def action_help(self) -> None:
        self.open_modal(HelpScreen())

    # -- overlays ------------------------------------------------------------------------------------
    def picture_widgets(self) -> list:
        """Every picture widget of the main screen (Sixel/Kitty overlays, detail pictures)."""
        pics = [*self.gallery.overlays, *self.offer.overlays]
        return pics + [p for p in (self.detail.image, self.detail.heatmap, *self.detail.near_pics) if p is not None]

    def open_modal(self, screen) -> None:
        """Push `screen` with the pictures beneath it hidden, and show them again when it closes.

        Why: Sixel pictures live in the terminal, not in Textual's cells: a picture under a modal is
        painted over the modal's text by the terminal. Hidden widgets leave their cells to the
        text beneath, which the modal then covers."""
        for pic in self.picture_widgets():
            pic.display = False
        self.push_screen(screen, callback=lambda _=None: self.show_pictures())

    def show_pictures(self) -> None:
        for gallery in (self.gallery, self.offer):
            for pic, proto in zip(gallery.overlays, gallery.protos, strict=False):
                pic.display = proto is not None
        for pic in (self.detail.image, self.detail.heatmap, *self.detail.near_pics):
            if pic is not None:
                pic.display = True

    async def action_quit(self) -> None:
        self.exit(self.state.summary())

    def on_resize(self, event) -> None:
        if self.in_detail and self.detail.resize_to(event.size.width, max(1, event.size.height - 2)):
            self.detail.proto = None
            self.redraw()
