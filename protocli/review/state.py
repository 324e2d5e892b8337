"""Review state: one push's prototypes + antitypes.json -> cursor, order, decisions saved at once.

Inputs: a push folder (prototypes.json, model.safetensors) and the run's antitypes.json.
Outputs: the same antitypes.json, rewritten atomically after every decision, and a summary dict.

This module is the whole behaviour of the review TUI without a terminal: the Textual app only
maps keys to these methods and draws the result, so tests drive it directly. It must never
import textual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocli import antitypes as at
from protocli.errors import BadInput
from protocli.review.offers import Offers
from protocli.runfiles import push_is_current, read_manifest, read_tensors, stage_ids

SORTS = ("id", "suspicion", "class", "weight", "undecided")


@dataclass(frozen=True)
class Proto:
    id: int
    cls: int
    class_name: str
    image: str
    cell: tuple[int, int]
    box: tuple[int, int, int, int]
    distance: float  # projection distance: squared L2 from the prototype before the push to its patch
    weight: float
    duplicate_of: int | None
    nearest: tuple[dict, ...]


def list_pushes(run_dir: Path) -> list[str]:
    """Push ids of a run, oldest first: the push stages its manifest lists."""
    return stage_ids(read_manifest(run_dir, full=False), "push")


def current_last_layer(push_dir: Path) -> np.ndarray | None:
    """The run's current last-layer weights, when its prototypes are still those of this push.

    The weights in prototypes.json are from the moment of the push; the last layer is usually
    fine-tuned afterwards, and the reviewer should see the weights the model votes with now.
    """
    from protocli.runfiles import ENCODER_KEYS, current_weights

    run_dir = push_dir.parent.parent
    try:
        manifest = read_manifest(run_dir, full=False)
    except BadInput:  # a push folder outside a run (tests): the push's own weights
        return None
    current = read_tensors(current_weights(run_dir, manifest), (*ENCODER_KEYS, "last_layer."),
                           what="current weights of the run")
    return current.get("last_layer.weight") if push_is_current(current, push_dir) else None


def read_push(push_dir: Path) -> tuple[dict, list[Proto], np.ndarray]:
    """prototypes.json and model.safetensors of one push -> (meta, prototypes, vectors (P, D))."""
    from protocli.runfiles import read_push as read_checked

    meta, vectors = read_checked(push_dir)
    last = current_last_layer(push_dir)
    if last is not None and last.shape != (len(meta["classes"]), len(vectors)):
        last = None
    protos = [Proto(p["prototype"], p["class"], p["class_name"] or meta["classes"][p["class"]], p["image"],
                    tuple(p["cell"]), tuple(p["box"]), float("nan") if p["projection_distance"] is None else p["projection_distance"],
                    float(last[p["class"], j]) if last is not None else float(p["weight"]),
                    p["duplicate_of"], tuple(p["nearest"]))
              for j, p in enumerate(meta["prototypes"])]
    return meta, protos, vectors


class ReviewState:
    """Cursor over an ordered, filterable list of prototypes; decisions go to disk at once."""

    def __init__(self, push_dir: Path, antitypes_path: Path, antitypes: at.Antitypes | None = None,
                 known_pushes: list[str] | None = None, read_only: bool = False, busy: str | None = None):
        self.push_dir = Path(push_dir)
        self.antitypes_path = Path(antitypes_path)
        self.meta, self.protos, self.vectors = read_push(self.push_dir)
        self.push: str = self.meta["push"]
        if antitypes is None:
            antitypes = at.load(self.antitypes_path, len(self.protos), self.vectors.shape[1], known_pushes)
        self.antitypes = antitypes
        self.busy = busy  # another process holds the run lock: nothing is saved
        self.read_only = read_only or busy is not None
        self.sort = "id"
        self.filter_class: int | None = None
        self.order: list[int] = list(range(len(self.protos)))
        self.cursor = 0
        self.history: list[tuple[int, dict | None]] = []  # undo stack: (prototype, decision it replaced)
        self.message = ""
        self.suspicion: dict | None = None  # the push's suspicion.json (scores, look-alikes), when known
        self.want_suspicion = False  # asked for the suspicion order before the scores were there
        self.offers = Offers(self)  # look-alikes offered after a reject (offers.py)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def current(self) -> Proto | None:
        return self.protos[self.order[self.cursor]] if self.order else None

    def decision(self, j: int) -> dict | None:
        return self.antitypes.get(j, self.push)

    def counts(self) -> dict:
        verdicts = self.antitypes.decided(self.push)
        rejected = sum(v == "reject" for v in verdicts.values())
        return {"total": len(self.protos), "reviewed": len(verdicts), "rejected": rejected,
                "accepted": len(verdicts) - rejected}

    def summary(self) -> dict:
        return {"push": self.push, **self.counts(), "file": str(self.antitypes_path)}

    # -- moving ------------------------------------------------------------------------------------
    def move(self, delta: int) -> None:
        if self.order:
            self.cursor = max(0, min(len(self.order) - 1, self.cursor + delta))

    def goto(self, index: int) -> None:
        self.cursor = 0
        self.move(index)

    def next_undecided(self) -> bool:
        n = len(self.order)
        for step in range(1, n + 1):
            i = (self.cursor + step) % n
            if self.decision(self.order[i]) is None:
                self.cursor = i
                return True
        self.message = "every prototype here has a decision"
        return False

    def _reorder(self, keep: int | None) -> None:
        ids = [p.id for p in self.protos if self.filter_class is None or p.cls == self.filter_class]
        if self.sort == "suspicion" and self.suspicion is None:
            self.sort = "id"
        key = {
            "id": lambda j: j,
            "suspicion": lambda j: (-self.suspicion["score"][j], j),
            "class": lambda j: (self.protos[j].cls, j),
            "weight": lambda j: (-self.protos[j].weight, j),
            # Fixed when sorting: cards do not jump away while one decides.
            "undecided": lambda j: (self.decision(j) is not None, j),
        }[self.sort]
        self.order = sorted(ids, key=key)
        self.cursor = self.order.index(keep) if keep in self.order else 0

    def cycle_sort(self) -> str:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        if self.sort == "suspicion" and self.suspicion is None:
            self.want_suspicion = True  # the app computes the scores; until then, the next sort
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
            self._reorder(self.current.id if self.current else None)
            self.message = f"sorted by {self.sort}; suspicion scores are being computed"
            return self.sort
        self.set_sort(self.sort)
        return self.sort

    def set_sort(self, sort: str) -> None:
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {SORTS}")
        self.sort = sort
        self._reorder(self.current.id if self.current else None)
        self.message = f"sorted by {self.sort}"

    def set_suspicion(self, doc: dict) -> None:
        """Scores and look-alikes of this push (suspicion.json); the order switches when it was asked for."""
        if len(doc.get("score", ())) != len(self.protos):
            raise ValueError("suspicion scores do not fit this push")
        self.suspicion = doc
        self.offers.set_look_alikes(doc.get("look_alikes"))
        if self.want_suspicion:
            self.want_suspicion = False
            self.set_sort("suspicion")

    def reject_id(self, j: int) -> bool:
        """Reject prototype j (not the cursor's) as the user, with undo; False when the write failed."""
        previous = self.decision(j)
        if not self._apply(j, {"verdict": "reject", "by": "user", "at": None}):
            return False
        self.history.append((j, previous))
        return True

    def rejected_ids(self) -> list[int]:
        return self.antitypes.rejected(self.push)

    def set_filter(self, cls: int | None) -> None:
        keep = self.current.id if self.current else None
        self.filter_class = cls
        self._reorder(keep)
        self.message = f"showing {len(self.order)} of {len(self.protos)} prototypes"

    def toggle_filter(self) -> None:
        """Filter to the current prototype's class, or clear the filter."""
        if self.filter_class is not None or self.current is None:
            self.set_filter(None)
        else:
            self.set_filter(self.current.cls)

    def next_class(self) -> None:
        classes = sorted({p.cls for p in self.protos})
        i = classes.index(self.filter_class) + 1 if self.filter_class in classes else 0
        self.set_filter(classes[i % len(classes)])

    def class_label(self, cls: int) -> str:
        names = self.meta.get("classes") or []
        if cls < len(names):
            return names[cls]
        return next((p.class_name for p in self.protos if p.cls == cls), str(cls))

    # -- deciding ----------------------------------------------------------------------------------
    def decide(self, verdict: str) -> bool:
        """Record the user's verdict on the current prototype, save, and step to the next card."""
        p = self.current
        if p is None or not self._writable():
            return False
        previous = self.decision(p.id)
        if not self._apply(p.id, {"verdict": verdict, "by": "user", "at": None}):
            return False
        self.history.append((p.id, previous))
        self.message = f"#{p.id} {verdict}ed"
        if verdict == "reject":
            self.offers.start(p.id)
        else:
            self.offers.dismiss()
        self.move(1)
        return True

    def undo(self) -> bool:
        """Undo this session's last decision (restoring what it replaced), else clear the current one."""
        if not self._writable():
            return False
        self.offers.dismiss()
        if self.history:
            j, previous = self.history[-1]
            if not self._apply(j, previous):
                return False
            self.history.pop()
            if j in self.order:
                self.cursor = self.order.index(j)
            self.message = f"#{j} back to {previous['verdict'] if previous else 'undecided'}"
            return True
        p = self.current
        if p is None or self.decision(p.id) is None:
            self.message = "nothing to undo"
            return False
        if self._apply(p.id, None):
            self.message = f"#{p.id} undecided"
            return True
        return False

    def _writable(self) -> bool:
        if self.busy:
            self.message = self.busy
        elif self.read_only:
            self.message = f"read-only: {self.push} is earlier than the current push {self.antitypes.push}"
        return not self.read_only

    def _set(self, j: int, record: dict | None) -> None:
        if record is None:
            self.antitypes.undo(j, self.push)
            return
        p = self.protos[j]
        self.antitypes.decide(j, record["verdict"], record["by"], self.push, vector=self.vectors[j],
                              cls=p.cls, image=p.image, box=p.box, at=record["at"])

    def _apply(self, j: int, record: dict | None) -> bool:
        """Change the decision on j and write the file; on a failed write put the old one back."""
        before = self.decision(j)
        before = dict(before) if before else None
        self._set(j, record)
        try:
            at.save(self.antitypes, self.antitypes_path)
        except OSError as e:
            self._set(j, before)
            self.message = f"could not write {self.antitypes_path}: {e}"
            return False
        return True


def check_push(run_dir: Path, push: str | None = None) -> list[str]:
    """The run's pushes, oldest first, after checking that the run has them and `push` among them."""
    if not run_dir.is_dir():
        raise BadInput("run folder not found", run_dir)
    pushes = list_pushes(run_dir)
    if not pushes:
        raise BadInput("this run has no push yet; run `protocli push RUN` first", run_dir)
    if push is not None and push not in pushes:
        raise BadInput(f"push {push!r} not found; pushes: {', '.join(pushes)}", run_dir / "stages")
    return pushes


def open_state(run_dir: Path, push: str | None = None, busy: str | None = None) -> ReviewState:
    """Run folder -> state on its latest push (or `push`), after carrying decisions over.

    Decisions of the antitypes file's current push carry over to a newer push where a prototype
    still sits on the same patch; the file is then saved with the new push as current. A push
    older than the file's current push opens read-only, and so does every push while another
    process holds the run lock (`busy`, the message to show): then nothing is saved.
    """
    run_dir = Path(run_dir)
    pushes = check_push(run_dir, push)
    target = push or pushes[-1]
    state = ReviewState(run_dir / "stages" / target, run_dir / "antitypes.json", known_pushes=pushes, busy=busy)
    ants = state.antitypes
    if ants.push is not None and at.push_key(ants.push) > at.push_key(target):
        state.read_only = True
        state.message = f"read-only: antitypes.json is already on {ants.push}"
    elif ants.push != target:
        had_decisions = bool(ants.decisions)
        carried = len(at.carry_onto(ants, run_dir / "stages", state.meta, state.vectors))
        if had_decisions and busy is None:
            at.save(ants, state.antitypes_path)
        state.message = f"{carried} decisions carried over from the previous push" if carried else ""
    from protocli.suspicion import load

    doc = load(state.push_dir, len(state.protos))  # scores cached by an earlier review or simulate
    if doc is not None:
        state.set_suspicion(doc)
    if busy is not None:
        state.message = busy
    return state
