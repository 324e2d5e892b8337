"""Review effort: an order, look-alike offers and the true non-object flags -> what a reviewer spends.

The simulated reviewer does what a person in the review TUI does, with the masks to decide:
it walks the prototypes in the TUI's order (`space` skips those already decided), looks at each,
and presses `r` on a non-object one. With look-alikes on, the TUI then offers that prototype's
look-alikes (`suspicion.look_alikes`: candidates nearest first; the first `PER_REJECT` of them
still undecided join the offer, see `fresh`), at most `SHOWN` cards at a time, every card marked for
rejection: a digit spares a card (one key each) and `R` rejects the cards still marked (one key).
The reviewer takes the offer when that is no dearer than rejecting the non-object cards one by
one later (spared + 1 <= non-object cards shown): it spares the object cards and presses `R`.
Otherwise it walks on and rejects those cards with `r` when it reaches them. Every card rejected
from an offer brings its own look-alikes into the offer (those not shown before in this chain and
undecided); spared cards leave it. Moving costs no key here, in either mode, as clicks in the
paper count rejects only.

Outputs: the rejected ids and, per run, `looked_90` / `looked_100` (distinct prototypes seen
when 90% / all of the non-object ones still undecided at the start had been rejected; None when
there were none), `keys` (reject keys pressed) and `one_key_each` (the keys without offers: one per
non-object prototype).
"""

from __future__ import annotations

import math

SHOWN = 8  # cards an offer shows at once (one row)
PER_REJECT = 8  # look-alikes a reject brings into the offer, at most


def fresh(candidates: list[int], skip) -> list[int]:
    """The first PER_REJECT candidates for which `skip(id)` is false.

    Decided prototypes are skipped before counting, not after: otherwise in a later round, where most
    prototypes carry their verdict over, the decided ones fill the slots and hide undecided
    look-alikes further down the list (measured in docs/review-effort.md)."""
    out: list[int] = []
    for o in candidates:
        if len(out) == PER_REJECT:
            break
        if not skip(o):
            out.append(o)
    return out


def bring(ids: list[int], candidates_of, chain: set[int], settled) -> list[int]:
    """The look-alikes the rejects `ids` bring into an offer: per id, `fresh` among its candidates,
    skipping those already in the chain or `settled` (decided); `chain` grows by what is brought."""
    out: list[int] = []
    for i in ids:
        new = fresh(candidates_of(i), lambda o: o in chain or settled(o))
        chain.update(new)
        out += new
    return out


def walk(order: list[int], non_object, look_alikes: list[list[int]] | None = None,
         decided: set[int] | frozenset = frozenset(), shown: int = SHOWN) -> dict:
    """Simulate the reviewer on `order`; `non_object[j]` is the truth, `decided` the carried-over ids."""
    flags = [bool(f) for f in non_object]
    targets = [j for j in order if flags[j] and j not in decided]
    n = len(targets)
    need90 = math.ceil(0.9 * n)
    rejected: set[int] = set()

    def settled(o: int) -> bool:  # carried over, or rejected in this walk
        return o in decided or o in rejected

    seen: set[int] = set()
    keys = 0
    looked = {"looked_90": None, "looked_100": None}

    def note() -> None:
        found = len(rejected)
        if looked["looked_90"] is None and n and found >= need90:
            looked["looked_90"] = len(seen)
        if looked["looked_100"] is None and n and found >= n:
            looked["looked_100"] = len(seen)

    for j in order:
        if settled(j):
            continue
        seen.add(j)
        if not flags[j]:
            continue
        keys += 1
        rejected.add(j)
        note()
        if look_alikes is None:
            continue
        chain = {j}
        offer = bring([j], look_alikes.__getitem__, chain, settled)
        while offer:
            cards = offer[:shown]
            seen.update(cards)
            bad = [o for o in cards if flags[o]]
            spare = len(cards) - len(bad)
            if not bad or spare + 1 > len(bad):
                break  # walk on: `r` on each non-object card when the walk reaches it is cheaper
            keys += spare + 1
            rejected.update(bad)
            note()
            offer = [o for o in offer if o not in cards] + bring(bad, look_alikes.__getitem__, chain, settled)
    return {"non_object_to_find": n, **looked, "keys": keys, "one_key_each": n,
            "looked_total": len(seen), "rejected_ids": sorted(rejected)}
