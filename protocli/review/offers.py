"""Look-alike offers: a reject in the review -> that prototype's look-alikes, offered for rejection.

Inputs: the review state (decisions, pushed vectors, prototypes.json, suspicion.json's look-alikes
when loaded). Output: `ids`, the offered prototypes in order, of which the first `room` (at most
`effort.SHOWN`, fewer when the terminal is narrow) are on screen (`shown`). Every card shown is
marked for rejection; `spare(i)` takes the mark off the i-th (or puts it back), and `reject()`
rejects the marked cards shown in one go. Spared cards then leave the offer, and every card
rejected brings its own look-alikes in (the first `effort.PER_REJECT` not offered before in this
chain and undecided: `effort.bring`), so a cluster is cleared without walking to it. The simulated
reviewer (effort.py) follows exactly these rules. Never imports textual or torch.
"""

from __future__ import annotations

from protocli.effort import SHOWN, bring


class Offers:
    def __init__(self, state):
        self.state = state
        self.enabled = True
        self.room = SHOWN  # cards the row can show: the app lowers it on a narrow terminal
        self.ids: list[int] = []
        self.of: int | None = None  # the reject that started the chain
        self.spared: set[int] = set()  # shown cards the reviewer took the reject mark off
        self._chain: set[int] = set()
        self._look: list[list[int]] | None = None

    def set_look_alikes(self, look: list[list[int]] | None) -> None:
        if look:
            self._look = look

    def look_alikes(self, j: int) -> list[int]:
        if self._look is None:  # no scores yet (the app computes them): only the prototypes on the same patch
            from protocli.suspicion import look_alikes

            self._look = look_alikes(self.state.vectors, self.state.meta, offered=[])
        return self._look[j]

    @property
    def shown(self) -> list[int]:
        return self.ids[:self.room]

    def _extend(self, ids: list[int]) -> None:
        self.ids += bring(ids, self.look_alikes, self._chain, lambda o: self.state.decision(o) is not None)

    def start(self, j: int) -> None:
        self.ids, self.of, self._chain, self.spared = [], j, {j}, set()
        if self.enabled:
            self._extend([j])

    def dismiss(self) -> None:
        self.ids, self.of, self._chain, self.spared = [], None, set(), set()

    @property
    def marked(self) -> list[int]:
        """The shown cards `reject` would reject."""
        return [j for j in self.shown if j not in self.spared]

    def spare(self, index: int) -> bool:
        """Take the reject mark off the index-th shown card, or put it back."""
        shown = self.shown
        if not 0 <= index < len(shown):
            self.state.message = f"no look-alike {index + 1} on offer"
            return False
        self.spared ^= {shown[index]}
        self.state.message = f"#{shown[index]} {'spared' if shown[index] in self.spared else 'marked again'}"
        return True

    def reject(self) -> int:
        """Reject the marked cards shown; spared ones leave the offer. Returns how many were rejected."""
        st = self.state
        shown = self.shown
        if not shown or not st._writable():
            return 0
        done = [j for j in shown if j not in self.spared and st.reject_id(j)]
        self.ids = [o for o in self.ids if o not in done and o not in self.spared]
        self.spared = set()
        self._extend(done)
        if done:
            st.message = f"rejected look-alike{'s' if len(done) > 1 else ''} " + " ".join(f"#{j}" for j in done)
        return len(done)
