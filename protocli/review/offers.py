"""Look-alike offers: a reject in the review -> that prototype's look-alikes, offered for rejection.

Inputs: the review state (decisions, pushed vectors, prototypes.json, suspicion.json's look-alikes
when loaded). Output: `ids`, the offered prototypes in order, of which the first `room` (at most
`effort.SHOWN`, fewer when the terminal is narrow) are on screen (`shown`). Every prototype rejected from the offer brings its own look-alikes in (those
not offered before in this chain and undecided), so a cluster is cleared without walking to it.
The simulated reviewer (effort.py) follows exactly these rules. Never imports textual or torch.
"""

from __future__ import annotations

from protocli.effort import SHOWN


class Offers:
    def __init__(self, state):
        self.state = state
        self.enabled = True
        self.room = SHOWN  # cards the row can show: the app lowers it on a narrow terminal
        self.ids: list[int] = []
        self.of: int | None = None  # the reject that started the chain
        self._chain: set[int] = set()
        self._look: list[list[int]] | None = None

    def set_look_alikes(self, look: list[list[int]] | None) -> None:
        if look:
            self._look = look

    def look_alikes(self, j: int) -> list[int]:
        if self._look is None:  # no suspicion.json yet: the same function, on the pushed vectors
            from protocli.suspicion import look_alikes

            self._look = look_alikes(self.state.vectors, self.state.meta)
        return self._look[j]

    @property
    def shown(self) -> list[int]:
        return self.ids[:self.room]

    def _extend(self, ids: list[int]) -> None:
        for i in ids:
            for o in self.look_alikes(i):
                if o not in self._chain and self.state.decision(o) is None:
                    self._chain.add(o)
                    self.ids.append(o)

    def start(self, j: int) -> None:
        self.ids, self.of, self._chain = [], j, {j}
        if self.enabled:
            self._extend([j])

    def dismiss(self) -> None:
        self.ids, self.of, self._chain = [], None, set()

    def reject(self, index: int | None = None) -> int:
        """Reject every shown look-alike (index None) or the index-th; returns how many were rejected."""
        st = self.state
        shown = self.shown
        if not shown or not st._writable():
            return 0
        if index is not None and not 0 <= index < len(shown):
            st.message = f"no look-alike {index + 1} on offer"
            return 0
        done = [j for j in (shown if index is None else [shown[index]]) if st.reject_id(j)]
        self.ids = [o for o in self.ids if o not in done]
        self._extend(done)
        st.message = f"rejected look-alike{'s' if len(done) > 1 else ''} " + " ".join(f"#{j}" for j in done)
        return len(done)
