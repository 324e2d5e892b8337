"""Which parts of a ProtoPNet train in each phase, and the last-layer-only phase itself.

Inputs: a model, fixed min distances (N, P) and labels. Outputs: the model's requires_grad/train()
flags set for a phase; the last layer fitted with Adam (train, mask, revise and prune all use it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from protocli import losses
from protocli.console import progress_bar
from protocli.files import append_jsonl
from protocli.metrics import accuracy_from_min_d


def set_phase(model, phase: str) -> None:
    """warm: add-on + prototypes; joint: + backbone; last: last layer only. Frozen parts in eval()."""
    trainable = {"warm": ("add_on", "prototypes"), "joint": ("features", "add_on", "prototypes"),
                 "last": ("last_layer",), "frozen": ()}[phase]
    for name in ("features", "add_on", "last_layer"):
        mod = getattr(model, name)
        on = name in trainable
        mod.train(on)
        for p in mod.parameters():
            p.requires_grad_(on)
    model.prototypes.requires_grad_("prototypes" in trainable)


def train_last_layer(model, min_d: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, l1: float,
                     batch_size: int, generator: torch.Generator, test: tuple | None = None,
                     log: Path | None = None, desc: str = "last layer") -> dict:
    """Adam on the last layer only, from fixed min distances (N, P). CE + l1 * L1(wrong-class weights).

    The cluster and separation terms of the full loss do not depend on the last layer, so they are
    left out here: they would change nothing but the logged value.
    """
    set_phase(model, "last")
    dev = model.prototypes.device
    opt = torch.optim.Adam(model.last_layer.parameters(), lr=lr)
    n = len(y)
    md, yy = min_d.to(dev), y.to(dev)
    rec: dict = {}
    with progress_bar(desc, epochs) as advance:
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=generator).to(dev)
            tot = correct = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                logits = model.classify(md[idx])
                loss = F.cross_entropy(logits, yy[idx]) + l1 * losses.l1_wrong_class(
                    model.last_layer.weight, model.class_identity)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * len(idx)
                correct += float((logits.argmax(1) == yy[idx]).sum())
            rec = {"phase": "last", "epoch": epoch, "loss": tot / n, "train_accuracy": correct / n}
            if test is not None:
                rec["test_accuracy"] = accuracy_from_min_d(model, *test)
            if log is not None:
                append_jsonl(log, rec)
            advance(1, info=f"acc {rec['train_accuracy']:.3f}")
    set_phase(model, "frozen")
    return rec
