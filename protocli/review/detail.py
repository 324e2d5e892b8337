"""Detail view: one prototype -> its training image with the box, the heatmap, its numbers and
the k nearest training patches.

Inputs: a `Proto`, its decision, and thumbnails delivered later by the app's loading thread.
Outputs: widgets sized in cells from the space the view gets (80x24 still shows everything).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from protocli.review.pictures import Renderer
from protocli.review.state import Proto
from protocli.review.widgets import MARKS, make_picture

K_MAX = 5
INFO_MIN = 26  # columns kept for the text beside the two big pictures


def layout_sizes(width: int, height: int, cell_px: tuple[int, int]) -> dict:
    """Cells for the big pictures and the nearest-patch row, keeping pictures square in pixels."""
    ratio = max(0.5, cell_px[1] / cell_px[0])  # columns per row for a square picture
    near_cols = max(4, min(14, width // K_MAX - 1))
    near_rows = max(2, round(near_cols / ratio))
    big_rows = max(3, height - (near_rows + 2) - 1)
    big_cols = min(round(big_rows * ratio), max(6, (width - INFO_MIN) // 2 - 1))
    big_rows = max(3, round(big_cols / ratio))
    return {"big": (big_cols, big_rows), "near": (near_cols, near_rows)}


class Detail(Vertical):
    def __init__(self, renderer: Renderer, **kw):
        super().__init__(**kw)
        self.renderer = renderer
        self.proto: Proto | None = None
        self.sizes = layout_sizes(80, 22, renderer.cell_px)
        pics = renderer.pictures
        big, near = self.sizes["big"], self.sizes["near"]
        self.image = make_picture(renderer, *big, classes="big") if pics else None
        self.heatmap = make_picture(renderer, *big, classes="big") if pics else None
        self.info = Static("", markup=False, id="info")
        self.near_pics = [make_picture(renderer, *near, classes="nearpic") if pics else None
                          for _ in range(K_MAX)]
        self.near_caps = [Static("", markup=False, classes="nearcap") for _ in range(K_MAX)]
        self.near_boxes = [Vertical(classes="near") for _ in range(K_MAX)]

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            if self.image is not None:
                with Vertical(classes="bigbox"):
                    yield self.image
                    yield Static("training image + box", markup=False, classes="cap")
                with Vertical(classes="bigbox"):
                    yield self.heatmap
                    yield Static("similarity heatmap", markup=False, classes="cap")
            yield self.info
        with Horizontal(id="nearest"):
            for box, pic, cap in zip(self.near_boxes, self.near_pics, self.near_caps, strict=True):
                with box:
                    if pic is not None:
                        yield pic
                    yield cap

    def resize_to(self, width: int, height: int) -> bool:
        """Fit pictures to the view; True when sizes changed (pictures must be loaded again)."""
        sizes = layout_sizes(width, height, self.renderer.cell_px)
        if sizes == self.sizes:
            return False
        self.sizes = sizes
        for pic, (cols, rows) in [(self.image, sizes["big"]), (self.heatmap, sizes["big"])] + [
                (p, sizes["near"]) for p in self.near_pics]:
            if pic is not None:
                pic.styles.width, pic.styles.height = cols, rows
                pic.show(None)
        for box in self.near_boxes:
            box.styles.width = sizes["near"][0] + 1
        return True

    def bind(self, proto: Proto | None, decision: dict | None, class_name) -> None:
        changed = proto is not self.proto
        self.proto = proto
        if proto is None:
            self.info.update("no prototype matches the filter")
            return
        lines = [f"prototype #{proto.id}", f"class {proto.cls}: {proto.class_name}"]
        if decision:
            lines.append(f"{MARKS[decision['verdict']]} by {decision['by']} at {decision['at']}")
        else:
            lines.append(MARKS[None])
        lines += [f"weight {proto.weight:+.3f}", f"projection distance {proto.distance:.4f}",
                  f"image {proto.image}", f"cell {list(proto.cell)}  box {list(proto.box)}"]
        if proto.duplicate_of is not None:
            lines.append(f"duplicate of #{proto.duplicate_of}")
        if proto.nearest:
            lines.append("nearest after push:")
            for i, n in enumerate(proto.nearest[:K_MAX], 1):
                own = "own class" if n.get("class") == proto.cls else class_name(n.get("class", -1))
                lines.append(f" {i}. d {n.get('distance', float('nan')):.3f}  {own}")
        self.info.update("\n".join(lines))
        if changed:
            for i, (box, cap) in enumerate(zip(self.near_boxes, self.near_caps, strict=True)):
                n = proto.nearest[i] if i < len(proto.nearest) else None
                box.display = n is not None
                if n is not None:
                    mark = "own" if n.get("class") == proto.cls else f"cls {n.get('class')}"
                    cap.update(f"{i + 1}. d {n.get('distance', float('nan')):.3f}\n{mark}")
            for pic in [self.image, self.heatmap, *self.near_pics]:
                if pic is not None:
                    pic.show(None)

    def wanted(self) -> list[tuple]:
        """(widget, kind, k, cols, rows, box) for every picture the current prototype needs."""
        p = self.proto
        if p is None or not self.renderer.pictures:
            return []
        big, near = self.sizes["big"], self.sizes["near"]
        out = [(self.image, "image", 0, *big, p.box), (self.heatmap, "heatmap", 0, *big, p.box)]
        out += [(self.near_pics[i], "nearest", i + 1, *near, None) for i in range(min(K_MAX, len(p.nearest)))]
        return out
