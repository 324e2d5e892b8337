"""`protocli status`: a run folder -> where it stands, as a dict (stages, pushes, decisions, metrics).

Inputs: RUN/manifest.json, the latest push's prototypes.json and weights, the current weights,
RUN/antitypes.json and RUN/rounds.json when present. Output: a plain dict; nothing is written and
no lock is taken, so it can watch a run that another command is changing (it then shows the run as
of the last commit). Every file is read through the checked readers, so a damaged one is BadInput
naming it (exit 2). Torch-free: it only reads JSON and, with safetensors' numpy backend, the
prototype and encoder tensors needed to tell whether the latest push still describes the model.
"""

from __future__ import annotations

from pathlib import Path

from protocli import antitypes as atmod
from protocli.errors import BadInput
from protocli.runfiles import (
    ENCODER_KEYS,
    current_weights,
    push_is_current,
    read_manifest,
    read_push_doc,
    read_rounds,
    read_tensors,
)

# Fields of a stage record that are not results (the rest, when numbers, are shown as its details).
_NOT_DETAILS = {"id", "kind", "at", "weights"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _details(stage: dict) -> dict:
    return {k: v for k, v in stage.items() if k not in _NOT_DETAILS and _is_number(v)}


def _test_accuracy(stage: dict):
    # mask and prune stages record the test accuracy after their fine-tune as accuracy_after.
    v = stage.get("test_accuracy", stage.get("accuracy_after"))
    return v if _is_number(v) else None


def latest_metrics(stages: list[dict]) -> dict | None:
    """Accuracies of the newest stage that recorded a test accuracy (its train accuracy if it has
    one): taken from one stage, so both describe the same model."""
    for s in reversed(stages):
        test = _test_accuracy(s)
        if test is not None:
            train = s.get("train_accuracy")
            return {"stage": s["id"], "test_accuracy": test, "train_accuracy": train if _is_number(train) else None}
    return None


def run_status(run_dir) -> dict:
    """The run's stages, pushes, decisions on the latest push and latest metrics."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput("run folder not found", run_dir)
    m = read_manifest(run_dir)
    stages = m["stages"]
    push_ids = [s["id"] for s in stages if s["kind"] == "push"]
    latest = push_ids[-1] if push_ids else None
    n_protos = None
    current = None
    if latest is not None:
        push_dir = run_dir / "stages" / latest
        n_protos = len(read_push_doc(push_dir)["prototypes"])
        now = read_tensors(current_weights(run_dir, m), ENCODER_KEYS, what="current weights")
        current = push_is_current(now, push_dir)
    ants = atmod.load(run_dir / "antitypes.json", num_prototypes=n_protos, known_pushes=push_ids)
    pushes = []
    for s in stages:
        if s["kind"] == "push":
            pushes.append({"push": s["id"], "at": s.get("at"), "prototypes": s.get("prototypes"),
                           "unique": s.get("unique"), "rejected": len(ants.rejected(s["id"])),
                           "accepted": len(ants.accepted(s["id"]))})
    rejected = len(ants.rejected(latest)) if latest else 0
    accepted = len(ants.accepted(latest)) if latest else 0
    rounds = read_rounds(run_dir / "rounds.json")
    return {
        "run": str(run_dir),
        "created": m.get("created"),
        "backbone": m["model"]["backbone"],
        "data": m["data"]["root"],
        "forked_from": [f.get("run") for f in m.get("forked_from", []) if isinstance(f, dict)],
        "stages": [{"id": s["id"], "kind": s["kind"], "at": s.get("at"), "details": _details(s)} for s in stages],
        "pushes": pushes,
        "latest_push": latest,
        "push_is_current": current,
        "decisions": {"push": latest, "prototypes": n_protos, "rejected": rejected, "accepted": accepted,
                      "undecided": None if n_protos is None else n_protos - rejected - accepted,
                      "antitypes": len(ants.antitypes)},
        "metrics": latest_metrics(stages),
        "rounds": len(rounds),
    }
