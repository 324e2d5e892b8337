"""Push pictures -> thumbnails sized in terminal cells, and the choice of renderer.

Inputs: the `--graphics` choice and the environment (tmux, SSH); PNGs of a push folder
(patches/, images/, heatmaps/, nearest/). Outputs: a `Renderer` (which widget draws pictures and how
many pixels one cell holds) and PIL thumbnails of exactly cols x rows cells, box drawn after the
downscale so it survives half-block resolution.

Why our own half-blocks: importing textual_image probes the terminal, which costs up to 0.65 s on
a silent terminal and, on a slow SSH link, leaves the late reply in stdin for Textual to read as
keys. Half-blocks need no probe, so `halfcell` (and `auto` inside tmux or over SSH) never import
textual_image. Kitty and Sixel use textual_image's widgets.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from protocli.review import GRAPHICS

BACKGROUND = (24, 24, 24)
BOX = (0, 255, 0)


def resolve_graphics(graphics: str, env: dict | None = None) -> str:
    """`--graphics` + environment -> kitty | sixel | halfcell | none | auto (let textual_image probe).

    tmux 3.3 drops Sixel (blank cells) and mangles Kitty, and 0.12's probe misreads slow SSH
    links, so auto means half-blocks there.
    """
    env = os.environ if env is None else env
    graphics = graphics.lower()
    if graphics not in GRAPHICS:
        raise ValueError(f"graphics must be one of {', '.join(GRAPHICS)}, not {graphics!r}")
    if graphics != "auto":
        return graphics
    if env.get("TERM", "") in ("dumb", ""):
        return "none"
    if env.get("TMUX") or env.get("SSH_CONNECTION") or env.get("SSH_TTY") or env.get("SSH_CLIENT"):
        return "halfcell"
    return "auto"


@dataclass
class Renderer:
    """How pictures are drawn: `kind`, the widget class (None: our half-blocks or no pictures) and
    the pixels one terminal cell shows (thumbnails are made at exactly that resolution)."""

    kind: str
    widget_cls: type | None = None
    cell_px: tuple[int, int] = (1, 2)

    @property
    def pictures(self) -> bool:
        return self.kind != "none"


def make_renderer(graphics: str = "auto", env: dict | None = None) -> Renderer:
    """Pick the renderer. For kitty/sixel/auto this imports textual_image, which probes the
    terminal: call it before App.run() (afterwards Textual's input thread eats the replies)."""
    kind = resolve_graphics(graphics, env)
    if kind in ("halfcell", "none"):
        return Renderer(kind)
    import textual_image.renderable as tir
    import textual_image.widget as tiw
    from textual_image._terminal import get_cell_size

    if kind == "auto":
        if tir.Image in (tir.HalfcellImage, tir.UnicodeImage):
            return Renderer("halfcell")  # no graphics protocol: our half-blocks are cheaper
        kind = "sixel" if tir.Image is tir.SixelImage else "kitty"
    cls = {"kitty": tiw.TGPImage, "sixel": tiw.SixelImage}[kind]
    size = get_cell_size()
    return Renderer(kind, cls, (max(1, size.width), max(1, size.height)))


def fit(img: Image.Image, width: int, height: int, box: tuple | None = None) -> Image.Image:
    """Letterbox `img` into a width x height canvas; draw `box` (in img pixels) after scaling."""
    img = img.convert("RGB")
    scale = min(width / img.width, height / img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    small = img.resize((w, h), Image.Resampling.LANCZOS)
    if box is not None:
        x0, y0, x1, y1 = box
        sx, sy = w / img.width, h / img.height
        # Half-open box -> last pixel inclusive; at least one pixel wide so it never vanishes.
        rect = [round(x0 * sx), round(y0 * sy), max(round(x0 * sx), round(x1 * sx) - 1),
                max(round(y0 * sy), round(y1 * sy) - 1)]
        ImageDraw.Draw(small).rectangle(rect, outline=BOX)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(small, ((width - w) // 2, (height - h) // 2))
    return canvas


def picture_path(push_dir: Path, kind: str, prototype: int, k: int = 0) -> Path:
    if kind == "nearest":
        return push_dir / "nearest" / f"{prototype:04d}_{k}.png"
    return push_dir / {"patch": "patches", "image": "images", "heatmap": "heatmaps"}[kind] / f"{prototype:04d}.png"


class Thumbnails:
    """Thread-safe LRU of thumbnails keyed by (kind, prototype, k, cols, rows): memory stays bounded
    however many prototypes one pages through. `convert` turns the PIL canvas into what the widget
    draws (e.g. half-block strips); it runs in the loading thread too."""

    def __init__(self, push_dir: Path, renderer: Renderer, capacity: int = 400, convert=None):
        self.push_dir = Path(push_dir)
        self.renderer = renderer
        self.capacity = capacity
        self.convert = convert or (lambda img: img)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, key: tuple):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def get(self, kind: str, prototype: int, cols: int, rows: int, box: tuple | None = None, k: int = 0):
        """The thumbnail (or None when the file is missing or unreadable). Slow: call off the UI thread."""
        key = (kind, prototype, k, cols, rows)
        hit = self.cached(key)
        if hit is not None:
            return hit
        path = picture_path(self.push_dir, kind, prototype, k)
        cw, ch = self.renderer.cell_px
        try:
            with Image.open(path) as img:
                canvas = fit(img, cols * cw, rows * ch, box)
        except (OSError, ValueError):
            return None
        value = self.convert(canvas)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value
