"""`protocli rounds`: run -> Alg. 1 of Gerstenberger et al. repeated N times; a per-round table (rounds.json).

Each round: push (the latest push is reused when the prototypes and the encoder have not changed
since it) -> consult the user (the simulated user, or a person in the review TUI) -> Q, the
antitype set, grows -> stop early when the round finds no non-object prototype -> revision epochs
on the latent cache -> push -> accuracy before the fine-tune -> last-layer fine-tune -> accuracy
after. Every step is a committed stage of the run, so an interrupted run keeps its finished rounds.

The table (RUN/rounds.json, rewritten atomically after every round, and the result's "rounds"):
- round 0 is the starting point (baseline); its "after" columns describe the model as it was;
- non_object: prototypes rejected on the push consulted at the start of the round (carried over
  or new); clicks: new rejects (decisions carried over from the previous push on the same patch
  do not count); decisions: new verdicts of either kind; antitypes: |Q| after consulting;
- accuracy_before_ft / accuracy_after_ft: test accuracy after the revision push, before and after
  the last-layer fine-tune; train_accuracy: after the fine-tune;
- non_object_after, overlap_ge_75: object statistics of the push after the revision (what the next
  round's user will see); null without segmentation masks. unique: distinct patches among the
  prototypes of that push (revision can drive several prototypes onto one patch).

With `final_mask`, the user is consulted on the last push and the prototypes still rejected are
masked, then the last layer is fine-tuned. The authors' code deletes them instead; masking is
equivalent for inference (a masked prototype adds exactly 0 to every logit) and keeps prototype
indices, antitypes.json and the push pictures valid.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch

from protocli import antitypes as atmod
from protocli import simulate as simmod  # as a module: tests stand in for its functions
from protocli.console import info
from protocli.errors import BadInput
from protocli.files import atomic_write_json
from protocli.mask import mask_model, rejected_on_latest_push
from protocli.metrics import accuracies_on_cache
from protocli.model import pushed_prototypes
from protocli.push import ensure_push
from protocli.revise import ReviseConfig, antitype_matrix, revise_model
from protocli.runfiles import read_push_doc

USERS = ("simulated", "tui")
EFFORT = ("keys", "looked_90", "looked_100")  # the simulated user's review effort (simulate.review_walk)


def consult(run, cub, user: str, criterion: str, ask=None, order: str = "id", look_alikes: bool = False) -> dict:
    """Ask the user about the latest push -> {push, non_object, clicks, decisions, antitypes}.

    `ask(run_dir, order)`: how a person is asked (the CLI passes the review TUI); it returns when they
    are done, having written their decisions to the run's antitypes.json."""

    if user == "simulated":
        r = simmod.simulate(run, criterion=criterion, cub=cub, order=order, look_alikes=look_alikes)
        return {
            "push": r["push"],
            "non_object": r["rejected"],
            "clicks": r["clicks"],
            "decisions": r["decisions"],
            "antitypes": r["antitypes"],
            **{k: r[k] for k in EFFORT},
        }
    push_dir = run.require_push()
    vectors = pushed_prototypes(push_dir)
    doc = read_push_doc(push_dir)
    known = run.pushes()
    # What the review will open with: the file's decisions on this push, or those carried onto it.
    # A preview on a copy that is never saved; the review does the carry-over itself.
    preview = atmod.load(run.antitypes_path, len(vectors), vectors.shape[1], known)
    atmod.carry_onto(preview, run.path / "stages", doc, vectors.numpy())
    old = preview.decided(push_dir.name)
    ask(run.path, order)  # blocks until the person is done
    after = atmod.load(run.antitypes_path, len(vectors), vectors.shape[1], known)
    now = after.decided(push_dir.name)
    new = {j: v for j, v in now.items() if old.get(j) != v}
    return {
        "push": push_dir.name,
        "non_object": len(after.rejected(push_dir.name)),
        "clicks": sum(v == "reject" for v in new.values()),
        "decisions": len(new),
        "antitypes": len(after.antitypes),
    }


def object_counts(run, cub, criterion: str, model) -> dict:
    """Latest push: non-object (criterion) and overlap >= .75 over active prototypes (None without masks),
    and the number of distinct patches (several prototypes may share one)."""

    push = run.latest_push()
    if push is None:
        return {"non_object_after": None, "overlap_ge_75": None, "unique": None}
    if not cub.has_masks:
        doc = read_push_doc(push)
        out = {"non_object_after": None, "overlap_ge_75": None}
    else:
        stats = simmod.push_object_stats(run, cub, push)
        doc = stats["doc"]
        s = simmod.summarize(stats, active=model.prototype_mask.detach().cpu() > 0)
        out = {"non_object_after": s[f"non_object_{criterion}"], "overlap_ge_75": s["overlap_ge_75"]}
    out["unique"] = sum(p.get("duplicate_of") is None for p in doc["prototypes"])
    return out


def _row(
    round_, consulted: dict | None, before_ft, after_ft, train_acc, counts: dict, seconds: float
) -> dict:
    c = consulted or {}
    return {
        "round": round_,
        "non_object": c.get("non_object"),
        "clicks": c.get("clicks", 0),
        "decisions": c.get("decisions", 0),
        "antitypes": c.get("antitypes"),
        "accuracy_before_ft": before_ft,
        "accuracy_after_ft": after_ft,
        "train_accuracy": train_acc,
        "non_object_after": counts["non_object_after"],
        "overlap_ge_75": counts["overlap_ge_75"],
        "unique": counts["unique"],
        "seconds": round(seconds, 2),
        **{k: c.get(k) for k in EFFORT},  # None without the simulated user
    }


def _check_args(user: str, ask, criterion: str, n_rounds: int, cfg, epochs: int) -> ReviseConfig:
    """Every argument checked (BadInput) before any work -> the revision config, with `epochs`."""
    if user not in USERS:
        raise BadInput(f"--user {user}: expected simulated or tui")
    if user == "tui" and ask is None:
        raise BadInput("--user tui: no way to ask a person was given (the command line passes the review TUI)")
    if criterion not in ("box", "cell"):
        raise BadInput(f"--criterion {criterion}: expected box or cell")
    if n_rounds < 1:
        raise BadInput(f"--rounds {n_rounds}: must be at least 1")
    cfg = replace(cfg or ReviseConfig(), epochs=epochs)
    cfg.check()
    return cfg


def _open_run(run_dir: Path, user: str, out: Path | None, device):
    """The run (forked to `out` when given), its data, the source folder's path, the model and its
    cached latents (train, train labels, test, test labels)."""
    from protocli.cache import run_latents
    from protocli.run import Run

    run = Run.open(run_dir)
    cub = run.cub()
    if user == "simulated" and not cub.has_masks:
        raise BadInput(
            "--user simulated needs segmentation masks and this dataset has none "
            "(no segmentations/ folder); use --user tui",
            run.data_root,
        )
    source = str(run.path)
    if out is not None:
        run = run.fork(out)
    model = run.load_model(device)
    splits = run_latents(run, model, cub, device)  # loaded once: the encoder stays frozen in every round
    return run, cub, source, model, splits


def _new_doc(run, user: str, criterion: str, cfg, source: str | None) -> dict:
    doc = {
        "version": 1,
        "run": str(run.path),
        "user": user,
        "criterion": criterion,
        "status": "running",
        "config": asdict(cfg),
        "data": "revision on cached latents of the unaugmented training images",
        "rounds": [],
    }
    if source is not None:
        doc["forked_from"] = source
    return doc


class _Table:
    """RUN/rounds.json as it grows: a row per round, the file rewritten atomically after each."""

    def __init__(self, run, cub, criterion: str, model, splits: tuple, device, doc: dict):
        self.run, self.cub, self.criterion, self.model = run, cub, criterion, model
        self.splits, self.device = splits, device
        self.doc, self.path = doc, run.path / "rounds.json"

    def add(self, r: int, consulted: dict | None, t0: float, fine_tune: tuple | None = None) -> None:
        """Round r's row (timed from t0), then the file. `fine_tune`: the revision's test accuracy before
        and after the last-layer fine-tune and its train accuracy; without one (round 0, or a round that
        found nothing to revise) the "after" columns describe the model as it is."""
        if fine_tune is None:
            ztr, ytr, zte, yte = self.splits
            fine_tune = (None, *accuracies_on_cache(self.model, (zte, yte), (ztr, ytr), self.device))
        counts = object_counts(self.run, self.cub, self.criterion, self.model)
        self.doc["rounds"].append(_row(r, consulted, *fine_tune, counts, time.perf_counter() - t0))
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.doc)


def _final_mask(run, model, cub, cfg, criterion: str, final_last_epochs, device, generator, splits) -> dict:
    """Mask the prototypes rejected on the latest push, fine-tune the last layer -> the doc's final_mask."""

    rejected, _ = rejected_on_latest_push(run, None, model.num_prototypes, model.cfg.proto_dim)
    m = mask_model(
        run,
        model,
        cub,
        rejected,
        last_epochs=cfg.last_epochs if final_last_epochs is None else final_last_epochs,
        lr_last=cfg.lr_last,
        device=device,
        generator=generator,
        splits=splits,
    )
    keys = ("stage", "masked", "masked_prototypes", "active_prototypes", "accuracy_before", "accuracy_masked",
            "accuracy_after", "train_accuracy_after")
    return {k: m[k] for k in keys} | object_counts(run, cub, criterion, model)


def _summary(doc: dict, num_prototypes: int, seconds: float) -> dict:
    """Start and end of the table's numbers, clicks and keys over all rounds (and the final consult)."""
    rows = doc["rounds"]
    done = [x for x in rows[1:] if x["accuracy_before_ft"] is not None]
    final = rows[-1]
    return {
        "rounds_run": len(rows) - 1,
        "revisions": len(done),
        "non_object_start": rows[0]["non_object_after"],
        "non_object_end": final["non_object_after"],
        "overlap_ge_75_start": rows[0]["overlap_ge_75"],
        "overlap_ge_75_end": final["overlap_ge_75"],
        "unique_start": rows[0]["unique"],
        "unique_end": final["unique"],
        "accuracy_start": rows[0]["accuracy_after_ft"],
        "accuracy_end": final["accuracy_after_ft"],
        "train_accuracy_start": rows[0]["train_accuracy"],
        "train_accuracy_end": final["train_accuracy"],
        "clicks": sum(x["clicks"] for x in rows) + doc.get("final_consult", {}).get("clicks", 0),
        "keys": sum(x.get("keys") or 0 for x in rows) + (doc.get("final_consult", {}).get("keys") or 0),
        "antitypes": max((x["antitypes"] or 0) for x in rows),
        "prototypes": num_prototypes,
        "seconds": round(seconds, 1),
    }


def rounds_run(
    run_dir: Path,
    n_rounds: int = 5,
    user: str = "simulated",
    epochs: int = 30,
    criterion: str = "box",
    final_mask: bool = False,
    ask=None,
    out: Path | None = None,
    device=None,
    generator: torch.Generator | None = None,
    cfg=None,
    final_last_epochs: int | None = None,
    order: str = "id",
    look_alikes: bool = False,
) -> dict:
    """Alg. 1 on a run (or on a fork at `out`). `cfg` (a ReviseConfig) sets everything but the epochs.
    `final_last_epochs`: last-layer epochs of the final mask (None: cfg.last_epochs).
    `order` and `look_alikes` go to the user: the TUI's first order, the simulated user's walk.
    `ask(run_dir, order)`: with user "tui", how the person is asked (chosen at the edge: the CLI
    passes the review TUI, a script anything that writes decisions and returns)."""
    cfg = _check_args(user, ask, criterion, n_rounds, cfg, epochs)
    device = device or torch.device("cpu")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    t_all = time.perf_counter()
    run, cub, source, model, splits = _open_run(run_dir, user, out, device)
    ask_user = partial(consult, run, cub, user, criterion, ask, order, look_alikes)
    table = _Table(run, cub, criterion, model, splits, device,
                   _new_doc(run, user, criterion, cfg, source if out is not None else None))
    doc = table.doc
    t0 = time.perf_counter()
    ensure_push(run, model, cub, splits[0], splits[1], device, cfg.box_map)
    table.add(0, None, t0)
    for r in range(1, n_rounds + 1):
        t0 = time.perf_counter()
        ensure_push(run, model, cub, splits[0], splits[1], device, cfg.box_map)
        c = ask_user()
        info(
            f"round {r}: {c['non_object']} non-object prototypes on {c['push']} ({c['clicks']} new), "
            f"{c['antitypes']} antitypes"
        )
        if c["non_object"] == 0:
            doc["status"] = "converged"
            table.add(r, c, t0)
            break
        q = antitype_matrix(run, None, model.num_prototypes, model.cfg.proto_dim)
        res = revise_model(run, model, cub, q, cfg, device, generator, splits=splits)
        table.add(r, c, t0, (res["accuracy_pushed"], res["accuracy_after"], res["train_accuracy"]))

    if final_mask:
        if doc["status"] != "converged":  # the last consult came before a revision: ask about its push
            doc["final_consult"] = ask_user()
        doc["final_mask"] = _final_mask(run, model, cub, cfg, criterion, final_last_epochs, device, generator,
                                        splits)
    doc["summary"] = _summary(doc, model.num_prototypes, time.perf_counter() - t_all)
    if doc["status"] == "running":
        doc["status"] = "done"
    table.save()
    doc["table"] = str(table.path)
    return doc
