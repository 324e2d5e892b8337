"""Widgets of the review TUI: pictures, the status bar and the help screen.

Inputs: a `Renderer` (pictures.py) and prototypes/decisions from the review state. Outputs: Textual
widgets. Pictures are set from a loading thread through `show(value)`; every text label uses
markup=False because class names may hold `[...]`.
"""

from __future__ import annotations

import types
from functools import lru_cache

from PIL import Image
from rich.color import Color, ColorType
from rich.color_triplet import ColorTriplet
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from protocli.review.pictures import Renderer

MARKS = {None: "· undecided", "reject": "✗ reject", "accept": "✓ accept",
         "marked": "✗ on R", "spared": "· spared"}  # the last two: cards of a look-alike offer


@lru_cache(maxsize=8192)
def _color(rgb: tuple[int, int, int]) -> Color:
    # Color.from_rgb costs ~5 us; a thumbnail has few distinct colours, so cache them.
    return Color(ColorTriplet(*rgb).hex, ColorType.TRUECOLOR, triplet=ColorTriplet(*rgb))


def half_block_strips(img: Image.Image) -> list[Strip]:
    """RGB image of w x 2h pixels -> h strips of '▀' (upper pixel = colour, lower = background)."""
    w, h2 = img.size
    px = img.convert("RGB").load()
    strips = []
    for y in range(0, h2 - 1, 2):
        segs = [Segment("▀", Style.from_color(_color(px[x, y]), _color(px[x, y + 1]))) for x in range(w)]
        strips.append(Strip(segs, w))
    return strips


def converter(renderer: Renderer):
    """What the loading thread turns a thumbnail into: strips for half-blocks, PIL for the rest."""
    return half_block_strips if renderer.widget_cls is None else (lambda img: img)


class HalfBlocks(Widget):
    """Draws precomputed half-block strips; blank until a picture arrives."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._strips: list[Strip] | None = None

    def show(self, strips: list[Strip] | None) -> None:
        if strips is not self._strips:
            self._strips = strips
            self.refresh()

    def render_line(self, y: int) -> Strip:
        if self._strips and y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)


_graphic_classes: dict[type, type] = {}


def make_picture(renderer: Renderer, cols: int, rows: int, **kw) -> Widget:
    """A picture widget of exactly cols x rows cells with a `show(thumbnail)` method."""
    if renderer.widget_cls is None:
        widget: Widget = HalfBlocks(**kw)
    else:
        base = renderer.widget_cls
        if base not in _graphic_classes:
            def show(self, img):
                if img is not self.image:
                    self.image = img
            # textual_image's Image subclasses must name their renderable again.
            _graphic_classes[base] = types.new_class(f"Graphic{base.__name__}", (base,),
                                                     {"Renderable": base._Renderable},
                                                     lambda ns: ns.update(show=show))
        widget = _graphic_classes[base](**kw)
    widget.styles.width = cols
    widget.styles.height = rows
    return widget


class StatusBar(Static):
    def set(self, counts: dict, push: str, sort: str, filt: str, path: str, message: str,
            read_only: bool, effect: str = "") -> None:
        c = counts
        line1 = (f"reviewed {c['reviewed']}/{c['total']}  rejected {c['rejected']}  accepted {c['accepted']}"
                 f"  │ {push}{' read-only' if read_only else ''}  │ → ")
        room = (self.size.width or 10**6) - len(line1)
        if len(path) > room:  # keep the file's own name visible: cut the path from the left
            path = "…" + path[len(path) - max(1, room - 1):]
        line1 += path
        line2 = f"sort {sort} │ {filt} │ " + (f"{effect} │ " if effect else "") + (message or "? help  r reject  a accept  u undo  space next  "
                                                  "f filter  s sort  tab detail  q quit")
        self.update(line1 + "\n" + line2, layout=False)


HELP = """\
 protocli review: keys                                   any key closes this

 ← ↓ ↑ →  h j k l   move        PgUp PgDn Home End   page, first, last
 r                  reject: not the object (its vector joins the antitypes)
 a                  accept
 u                  undo this session's last decision (else clear the card)
 space              next undecided prototype
 f  F               filter to this card's class / all;  next class
 s                  sort: id, suspicion (background-like first), class,
                    weight, undecided first
 tab                gallery <-> detail (image, heatmap, nearest patches)
 ?   q, ctrl+c      this help;  quit (every decision is already saved)

 After r, a row under the gallery offers look-alikes, each marked for R:
 1-8                spare card n (press again to mark it again)
 R                  reject the marked cards;  x, esc  dismiss the row

 The status line shows what masking the rejected prototypes would do to
 test accuracy, now and after a short last-layer refit. Every decision is
 written to antitypes.json at once."""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,enter,space", "dismiss", show=False)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; max-width: 100%; height: auto; border: round $accent;
                          background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, markup=False)

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()
