"""Gallery: one page of prototype cards, drawn by a single widget -> a grid that fits the terminal.

Inputs: for every slot of the page a prototype, its decision, whether the cursor is on it, and
(later, from the loading thread) its thumbnail. Output: the drawn page.

Why one widget and not a widget per card: Textual repaints every widget on the lines between
the changes, and a key changes a card and the status bar at the bottom, so with a widget per card
each key repainted the whole grid (250 ms at 200x50). Here each card's lines are cached strips and
a repaint only joins them. Half-block pictures are strips too. Kitty/Sixel pictures are
textual_image widgets laid over the picture slots (position: absolute) and change only with the
page.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.containers import Container
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from protocli.review.pictures import Renderer
from protocli.review.state import Proto
from protocli.review.widgets import MARKS, make_picture

PIC = (12, 6)            # picture of a card in cells: 12x12 half-block pixels, square on 1:2 cells
LABEL_ROWS = 3
CARD_W = 16              # border + 14 columns of text
COLORS = {None: "grey50", "reject": "#e0524f", "accept": "#4fb05a", "marked": "#b0403d", "spared": "grey50"}
CURSOR = "#f0c040"
ROUND, HEAVY = "╭─╮│╰╯", "┏━┓┃┗┛"


def card_height(renderer: Renderer) -> int:
    return (PIC[1] if renderer.pictures else 0) + LABEL_ROWS + 2


def _text(text: str, width: int, style: Style) -> Strip:
    """Exactly `width` cells: padded, or cut with an ellipsis (wide characters counted right)."""
    if cell_len(text) > width:
        text = set_cell_size(text, width - 1) + "…"
    return Strip([Segment(set_cell_size(text, width), style)], width)


def card_lines(proto: Proto | None, verdict: str | None, by: str | None, cursor: bool, picture,
               renderer: Renderer, base: Style) -> list[Strip]:
    """The card's lines: border, picture (strips or blank), id/weight, decision, class name."""
    height = card_height(renderer)
    if proto is None:
        return [Strip.blank(CARD_W, base)] * height
    color = COLORS[verdict] if not (cursor and verdict is None) else CURSOR
    edge = base + Style(color=color, bold=cursor)
    tl, h, tr, v, bl, br = HEAVY if cursor else ROUND
    inner = CARD_W - 2
    side = Segment(v, edge)
    lines = [Strip([Segment(tl + h * inner + tr, edge)], CARD_W)]
    if renderer.pictures:
        pad = (inner - PIC[0]) // 2
        for y in range(PIC[1]):
            pic = picture[y] if isinstance(picture, list) and y < len(picture) else Strip.blank(PIC[0], base)
            lines.append(Strip.join([Strip([side]), Strip.blank(pad, base), pic,
                                     Strip.blank(inner - pad - PIC[0], base), Strip([side])]))
    if verdict in ("marked", "spared"):  # a card of the look-alike offer: `by` is its digit key
        mark = f"{by} {MARKS[verdict]}"
    else:
        mark = MARKS[verdict] + (" sim" if by == "simulated" else "")
    label = [(f"#{proto.id}  w {proto.weight:+.2f}", base + Style(bold=True, reverse=cursor)),
             (mark, base + Style(color=COLORS[verdict], bold=cursor)),
             (proto.class_name, base + Style(dim=not cursor))]
    for text, style in label:
        lines.append(Strip.join([Strip([side]), _text(text, inner, style), Strip([side])]))
    lines.append(Strip([Segment(bl + h * inner + br, edge)], CARD_W))
    return lines


class Canvas(Widget):
    """Draws the cards; `set_slot` marks only the changed card's lines for repaint."""

    def __init__(self, renderer: Renderer, **kw):
        super().__init__(**kw)
        self.renderer = renderer
        self.cols = 0
        self.slots: list[tuple] = []       # (proto, verdict, by, cursor)
        self.pictures: list = []           # half-block strips per slot (None until loaded)
        self._lines: list[list[Strip] | None] = []

    def resize_slots(self, cols: int, n: int) -> None:
        self.cols = cols
        self.slots = [(None, None, None, False)] * n
        self.pictures = [None] * n
        self._lines = [None] * n
        self.refresh()

    def set_slot(self, i: int, proto: Proto | None, verdict: str | None, by: str | None, cursor: bool,
                 picture=None, keep_picture: bool = True) -> None:
        sig = (proto, verdict, by, cursor)
        new_picture = not keep_picture or proto is not self.slots[i][0]
        if sig == self.slots[i] and not new_picture:
            return
        self.slots[i] = sig
        if new_picture:
            self.pictures[i] = picture
        self._dirty(i)

    def set_picture(self, i: int, picture) -> None:
        self.pictures[i] = picture
        self._dirty(i)

    def _dirty(self, i: int) -> None:
        self._lines[i] = None
        h = card_height(self.renderer)
        self.refresh(Region((i % self.cols) * CARD_W, (i // self.cols) * h, CARD_W, h))

    def render_line(self, y: int) -> Strip:
        h = card_height(self.renderer)
        row, dy = divmod(y, h)
        base = self.rich_style
        parts = []
        for c in range(self.cols):
            i = row * self.cols + c
            if i >= len(self.slots):
                break
            if self._lines[i] is None:
                self._lines[i] = card_lines(*self.slots[i], self.pictures[i], self.renderer, base)
            parts.append(self._lines[i][dy])
        return Strip.join(parts).adjust_cell_length(self.size.width, base) if parts else Strip.blank(
            self.size.width, base)


class Gallery(Container):
    """The canvas plus, for Kitty/Sixel, picture widgets laid over the cards' picture slots."""

    DEFAULT_CSS = """
    Gallery { layers: cards pictures; }
    Gallery > Canvas { layer: cards; width: 100%; height: 100%; }
    Gallery > .overlay { layer: pictures; position: absolute; }
    """

    def __init__(self, renderer: Renderer, **kw):
        super().__init__(**kw)
        self.renderer = renderer
        self.canvas = Canvas(renderer)
        self.overlays: list[Widget] = []
        self.grid = (0, 0)
        self.protos: list[Proto | None] = []

    def compose(self):
        yield self.canvas

    @property
    def page_size(self) -> int:
        return self.grid[0] * self.grid[1]

    async def on_resize(self, event) -> None:
        cols = max(1, event.size.width // CARD_W)
        rows = max(1, event.size.height // card_height(self.renderer))
        if (cols, rows) == self.grid or event.size.height == 0:
            return
        self.grid = (cols, rows)
        self.protos = [None] * (cols * rows)
        self.canvas.resize_slots(cols, cols * rows)
        if self.renderer.widget_cls is not None:
            await self.remove_children(self.overlays)
            self.overlays = []
            pad = (CARD_W - 2 - PIC[0]) // 2
            for i in range(cols * rows):
                pic = make_picture(self.renderer, *PIC, classes="overlay")
                pic.styles.offset = ((i % cols) * CARD_W + 1 + pad, (i // cols) * card_height(self.renderer) + 1)
                self.overlays.append(pic)
            await self.mount_all(self.overlays)
        self.app.redraw(force=True)

    def bind(self, i: int, proto: Proto | None, decision: dict | None, cursor: bool, thumb=None) -> None:
        verdict = decision["verdict"] if decision else None
        by = decision["by"] if decision else None
        new = proto is not self.protos[i]
        self.protos[i] = proto
        if self.overlays:
            self.canvas.set_slot(i, proto, verdict, by, cursor)
            if new:  # under a modal (a resize while the help is up) pictures stay hidden until it closes
                self.overlays[i].display = proto is not None and self.screen.is_active
                self.overlays[i].show(thumb)
        else:
            self.canvas.set_slot(i, proto, verdict, by, cursor, thumb, keep_picture=not new)

    def show_picture(self, prototype: int, thumb) -> None:
        """From the loader: ignored when no slot shows that prototype any more."""
        for i, p in enumerate(self.protos):
            if p is not None and p.id == prototype:
                if self.overlays:
                    self.overlays[i].show(thumb)
                else:
                    self.canvas.set_picture(i, thumb)
