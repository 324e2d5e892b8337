"""antitypes.json: review decisions and the antitype set Q -> one file shared by review, simulate,
revise and mask.

Inputs: the run's `antitypes.json` (may be missing), the pushed prototype vectors, and
`prototypes.json` of two pushes (for carry-over). Outputs: an `Antitypes` object and, through
`save`, the same file rewritten atomically.

Format (version 1; docs/ARCHITECTURE.md has the rules):

    {"version": 1, "push": "003-push",
     "decisions": [{"prototype": 17, "verdict": "reject", "by": "user", "at": "...Z", "push": "003-push"}],
     "antitypes": [{"prototype": 17, "class": 1, "push": "003-push", "image": "...", "box": [x0, y0, x1, y1],
                    "vector": [D floats]}]}

Rules kept by the methods (mutate through them, not through the lists):
- one decision per (prototype, push); a new one replaces it, `undo` removes it;
- `antitypes` (Q) holds the vectors of rejected prototypes. Entries of the current push follow its
  decisions (reject adds, accept or undo of the reject removes); entries of earlier pushes never go
  away, so Q only grows across rounds. A vector identical to one Q already holds for the same
  prototype is not added twice (a prototype that stays on its patch under a frozen encoder keeps
  the very same vector);
- `push` is the current push. Decisions on an earlier push are closed: changing them raises
  ValueError, because their vectors may already have been trained on.

`load` never hands back an object for a file it could not parse or validate (it raises BadInput
naming the file and the field), so such a file is never overwritten by `save`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocli.errors import BadInput
from protocli.files import atomic_write_text, now_iso, read_json
from protocli.runfiles import read_push_doc

VERSION = 1
VERDICTS = ("reject", "accept")
ACTORS = ("user", "simulated")


def push_key(push_id: str) -> tuple[int, str]:
    """Sort key of a push id ("002-push" -> (2, ...)): stage numbers order pushes in time."""
    m = re.match(r"(\d+)", push_id)
    return (int(m.group(1)) if m else -1, push_id)


def _vector_list(vector: Any) -> list[float]:
    # str() of a float32 is its shortest round-tripping form: the file stays small and loading
    # it back as float32 gives the very same bits.
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    return [float(str(v)) for v in arr]


@dataclass
class Antitypes:
    version: int = VERSION
    push: str | None = None
    decisions: list[dict] = field(default_factory=list)
    antitypes: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._decided = {(d["prototype"], d["push"]): d for d in self.decisions}

    # -- queries ---------------------------------------------------------------------------------
    def get(self, prototype: int, push: str | None = None) -> dict | None:
        """The decision record on (prototype, push), or None. `push` defaults to the current push."""
        return self._decided.get((prototype, push or self.push))

    def decision(self, prototype: int, push: str | None = None) -> str | None:
        d = self.get(prototype, push)
        return d["verdict"] if d else None

    def decided(self, push: str | None = None) -> dict[int, str]:
        """prototype -> verdict for every decision on `push` (default: the current push)."""
        push = push or self.push
        return {d["prototype"]: d["verdict"] for d in self.decisions if d["push"] == push}

    def rejected(self, push: str | None = None) -> list[int]:
        return sorted(j for j, v in self.decided(push).items() if v == "reject")

    def accepted(self, push: str | None = None) -> list[int]:
        return sorted(j for j, v in self.decided(push).items() if v == "accept")

    def vectors(self, dim: int | None = None) -> np.ndarray:
        """All antitype vectors, every push, as a float32 (S, D) array (S may be 0)."""
        if not self.antitypes:
            return np.zeros((0, dim or 0), dtype=np.float32)
        return np.asarray([e["vector"] for e in self.antitypes], dtype=np.float32)

    # -- changes ---------------------------------------------------------------------------------
    def _check_open(self, push: str) -> None:
        if self.push is not None and push_key(push) < push_key(self.push):
            raise ValueError(f"decisions on {push} are closed: the current push is {self.push}")

    def decide(self, prototype: int, verdict: str, by: str, push: str, vector: Any = None,
               cls: int | None = None, image: str | None = None, box: Any = None,
               at: str | None = None) -> dict | None:
        """Record `verdict` on (prototype, push); returns the decision it replaced, or None.

        A reject needs the prototype's vector on that push (and, for the record, its class, image
        and box); it goes into Q unless Q already holds the identical vector for this prototype.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
        if by not in ACTORS:
            raise ValueError(f"by must be one of {ACTORS}, not {by!r}")
        if verdict == "reject" and vector is None:
            raise ValueError("a reject needs the prototype's vector")
        self._check_open(push)
        previous = self._remove(prototype, push)
        record = {"prototype": int(prototype), "verdict": verdict, "by": by, "at": at or now_iso(),
                  "push": push}
        self.decisions.append(record)
        self._decided[(record["prototype"], push)] = record
        if verdict == "reject":
            vec = _vector_list(vector)
            if not self._holds(prototype, vec):
                self.antitypes.append({
                    "prototype": int(prototype), "class": int(cls) if cls is not None else -1,
                    "push": push, "image": image or "",
                    "box": [int(v) for v in box] if box is not None else [0, 0, 0, 0], "vector": vec})
        if self.push is None or push_key(push) > push_key(self.push):
            self.push = push
        return previous

    def undo(self, prototype: int, push: str | None = None) -> dict | None:
        """Remove the decision on (prototype, push) and its antitype entry; returns it (or None)."""
        push = push or self.push
        if push is None:
            return None
        self._check_open(push)
        return self._remove(prototype, push)

    def _remove(self, prototype: int, push: str) -> dict | None:
        old = self._decided.pop((prototype, push), None)
        if old is not None:
            self.decisions.remove(old)
            # Only this push's entry follows the decision; earlier pushes' vectors stay in Q.
            self.antitypes = [e for e in self.antitypes
                              if not (e["prototype"] == prototype and e["push"] == push)]
        return old

    def _holds(self, prototype: int, vec: list[float]) -> bool:
        return any(e["prototype"] == prototype and e["vector"] == vec for e in self.antitypes)

    def latest_vector(self, prototype: int) -> list[float] | None:
        """The newest antitype vector recorded for `prototype`, or None."""
        for e in reversed(self.antitypes):
            if e["prototype"] == prototype:
                return e["vector"]
        return None

    def to_dict(self) -> dict:
        return {"version": self.version, "push": self.push, "decisions": list(self.decisions),
                "antitypes": list(self.antitypes)}


def save(antitypes: Antitypes, path: str | Path) -> Path:
    """Write atomically, one decision or antitype per line (readable diffs, fast to write)."""
    def block(name: str, items: list[dict]) -> str:
        if not items:
            return f' "{name}": []'
        return f' "{name}": [\n' + ",\n".join("  " + json.dumps(x) for x in items) + "\n ]"

    text = ("{\n" + f' "version": {antitypes.version},\n' + f' "push": {json.dumps(antitypes.push)},\n'
            + block("decisions", antitypes.decisions) + ",\n" + block("antitypes", antitypes.antitypes)
            + "\n}\n")
    return atomic_write_text(path, text)


def load(path: str | Path, num_prototypes: int | None = None, dim: int | None = None,
         known_pushes: list[str] | None = None) -> Antitypes:
    """Read and validate antitypes.json; a missing file is an empty Antitypes.

    Every fault raises BadInput with the file and the field, e.g.
    "runs/a/antitypes.json: antitypes[3].vector has 64 values, expected 128".
    """
    path = Path(path)
    if not path.exists():
        return Antitypes()
    data = read_json(path, "antitypes file")
    return _validate(data, path, num_prototypes, dim, known_pushes)


def load_for_run(run, path: Path | None, num_prototypes: int, dim: int) -> tuple[Antitypes, Path]:
    """The run's decisions file (or `path`), checked against its prototypes and pushes -> (antitypes, path)."""
    path = Path(path) if path is not None else run.antitypes_path
    return load(path, num_prototypes=num_prototypes, dim=dim, known_pushes=run.pushes()), path


class _Checks:
    """The field checks of one decisions file; each fault is BadInput naming the file and the field."""

    def __init__(self, path: Path, num_prototypes: int | None, known_pushes: list[str] | None):
        self.path, self.num_prototypes, self.known_pushes = path, num_prototypes, known_pushes

    def bad(self, msg: str) -> BadInput:
        return BadInput(msg, self.path)

    def push(self, value: Any, where: str, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            raise self.bad(f"{where} is {value!r}, expected a push id")
        known = self.known_pushes
        if known is not None and value not in known:
            raise self.bad(f"{where} is {value!r}, not a push of this run ({', '.join(known) or 'none'})")

    def proto(self, value: Any, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.bad(f"{where} is {value!r}, expected a prototype index")
        if self.num_prototypes is not None and value >= self.num_prototypes:
            raise self.bad(f"{where} is {value}, the model has {self.num_prototypes} prototypes")

    def entries(self, data: dict, name: str) -> list:
        items = data.get(name, [])
        if not isinstance(items, list):
            raise self.bad(f"{name} must be a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.bad(f"{name}[{i}] must be an object")
        return items


def _check_decisions(chk: _Checks, decisions: list) -> None:
    seen: set[tuple[int, str]] = set()
    for i, d in enumerate(decisions):
        where = f"decisions[{i}]"
        chk.proto(d.get("prototype"), f"{where}.prototype")
        if d.get("verdict") not in VERDICTS:
            raise chk.bad(f"{where}.verdict is {d.get('verdict')!r}, expected reject or accept")
        if d.get("by") not in ACTORS:
            raise chk.bad(f"{where}.by is {d.get('by')!r}, expected user or simulated")
        if not isinstance(d.get("at"), str):
            raise chk.bad(f"{where}.at is {d.get('at')!r}, expected an ISO-8601 time")
        chk.push(d.get("push"), f"{where}.push")
        key = (d["prototype"], d["push"])
        if key in seen:
            raise chk.bad(f"{where} repeats prototype {key[0]} on {key[1]} (one decision per prototype and push)")
        seen.add(key)


def _check_antitypes(chk: _Checks, ants: list, dim: int | None) -> None:
    """Checks each antitype entry and turns its vector into floats (all vectors one width, `dim` if given)."""
    width = dim
    for i, e in enumerate(ants):
        where = f"antitypes[{i}]"
        chk.proto(e.get("prototype"), f"{where}.prototype")
        chk.push(e.get("push"), f"{where}.push")
        if not isinstance(e.get("class"), int):
            raise chk.bad(f"{where}.class is {e.get('class')!r}, expected a class index")
        box = e.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)):
            raise chk.bad(f"{where}.box is {box!r}, expected [x0, y0, x1, y1] integers")
        vec = e.get("vector")
        if not isinstance(vec, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vec):
            raise chk.bad(f"{where}.vector must be a list of finite numbers")
        if width is None:
            width = len(vec)
        if len(vec) != width or width == 0:
            raise chk.bad(f"{where}.vector has {len(vec)} values, expected {width}")
        e["vector"] = [float(v) for v in vec]


def _validate(data: Any, path: Path, num_prototypes: int | None, dim: int | None,
              known_pushes: list[str] | None) -> Antitypes:
    chk = _Checks(path, num_prototypes, known_pushes)
    if not isinstance(data, dict):
        raise chk.bad("expected a JSON object")
    if data.get("version") != VERSION:
        raise chk.bad(f"version is {data.get('version')!r}, expected {VERSION}")
    chk.push(data.get("push"), "push", optional=True)
    decisions = chk.entries(data, "decisions")
    _check_decisions(chk, decisions)
    ants = chk.entries(data, "antitypes")
    _check_antitypes(chk, ants, dim)
    return Antitypes(version=VERSION, push=data.get("push"), decisions=decisions, antitypes=ants)


def carry_over(antitypes: Antitypes, old_prototypes_json: dict, new_prototypes_json: dict,
               new_vectors: Any = None, by: str | None = None) -> int:
    """Copy decisions of the old push to the new one where a prototype still sits on the same patch.

    Same patch = same training image and same latent cell. The copy keeps the verdict and the actor
    (unless `by` is given). For a reject, the new push's vector (`new_vectors[j]`, shape (P, D))
    joins Q unless it is identical to the one already there; without `new_vectors` the last known
    vector is reused, which is right only while the encoder is frozen. Afterwards the current push
    is the new one. Call it before anyone decides on the new push: once `antitypes.push` is the
    new push it does nothing (a decision the user undid there must not come back). Returns the
    number of decisions carried.
    """
    return len(_carry(antitypes, old_prototypes_json, new_prototypes_json, new_vectors, by))


def _carry(antitypes: Antitypes, old_doc: dict, new_doc: dict, new_vectors: Any,
           by: str | None) -> dict[int, str]:
    """`carry_over`, returning {prototype: verdict} of the decisions carried."""
    old_push, new_push = old_doc["push"], new_doc["push"]
    if antitypes.push is not None and push_key(antitypes.push) >= push_key(new_push):
        return {}
    old_by_id = {p["prototype"]: p for p in old_doc["prototypes"]}
    carried: dict[int, str] = {}
    for p in new_doc["prototypes"]:
        j = p["prototype"]
        d = antitypes.get(j, old_push)
        o = old_by_id.get(j)
        if d is None or o is None or o["image"] != p["image"] or list(o["cell"]) != list(p["cell"]):
            continue
        vector = None
        if d["verdict"] == "reject":
            vector = new_vectors[j] if new_vectors is not None else antitypes.latest_vector(j)
            if vector is None:
                continue
        antitypes.decide(j, d["verdict"], by or d["by"], new_push, vector=vector, cls=p["class"],
                         image=p["image"], box=p["box"])
        carried[j] = d["verdict"]
    antitypes.push = new_push
    return carried


def carry_onto(antitypes: Antitypes, stages_dir: Path, new_doc: dict, new_vectors: Any) -> dict[int, str]:
    """Move the decisions file onto push `new_doc` (its prototypes.json), carrying over the decisions
    of the file's current push (`carry_over`; its push document read from `stages_dir`) -> {prototype:
    verdict} of the decisions carried. The one place that review, simulate and rounds carry over.

    - the file has no push yet (no decisions): nothing to carry; the new push becomes current;
    - the file is already on this push or a newer one: nothing changes (a decision undone on the
      new push must not come back; an older push is not current again);
    - the old push's folder is gone: its patches are unknown, so nothing is carried, and the new
      push becomes current (its decisions stay in the file, closed). A damaged prototypes.json
      there is BadInput, as everywhere.
    `new_vectors` (P, D): the new push's prototype vectors, the vectors a carried reject adds to Q.
    """
    new_push = new_doc["push"]
    if antitypes.push is not None and push_key(antitypes.push) >= push_key(new_push):
        return {}
    old_dir = Path(stages_dir) / antitypes.push if antitypes.push is not None else None
    if old_dir is None or not old_dir.is_dir():
        antitypes.push = new_push
        return {}
    return _carry(antitypes, read_push_doc(old_dir), new_doc, new_vectors, None)
