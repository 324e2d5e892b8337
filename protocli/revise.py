"""`protocli revise`: run + antitypes.json -> prototypes moved away from the antitypes, pushed, fine-tuned.

Condition 2 of Gerstenberger et al. (one pass of Alg. 1's inner loop). With the encoder frozen,
the prototypes and the last layer are trained (Adam, two parameter groups) with

    CE + lam_l1 L1 + lam_refine Refine(prototypes, Q) + lam_con Con  (+ lam_clst Clst - lam_sep Sep)

where Q holds every antitype vector in antitypes.json (accumulated over rounds). Then the
prototypes are pushed onto real training patches, and the last layer alone is fine-tuned.

Data: the cached latents of the UNAUGMENTED training images (the authors trained on the 30x
augmented set; augmented views cannot be cached). An epoch is a few small matmuls per batch of
cached latent grids, no backbone pass. Per epoch, the stage's metrics.jsonl gets Refine, the Con
hinge and count, the min distance between prototypes and antitypes, the loss, train accuracy and
test accuracy (test is logged only, never used to select anything).

Stages written: NNN-revise (weights after the revision epochs), NNN-push, NNN-last.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from protocli import losses
from protocli.antitypes import load_for_run
from protocli.console import info, progress_bar
from protocli.errors import BadInput
from protocli.files import append_jsonl
from protocli.metrics import accuracies_on_cache, accuracy_from_min_d
from protocli.phases import set_phase, train_last_layer
from protocli.push import push_model  # revision ends with a push, like train
from protocli.revise_config import ReviseConfig

DATA_NOTE = "cached latents of the unaugmented training images"


def set_revise_phase(model) -> None:
    """Prototypes and last layer trainable; backbone and add-on frozen and in eval()."""
    set_phase(model, "frozen")
    model.prototypes.requires_grad_(True)
    for p in model.last_layer.parameters():
        p.requires_grad_(True)


def make_optimizer(model, cfg: ReviseConfig) -> torch.optim.Optimizer:
    """Adam with two groups, no weight decay and no schedule (the authors' deselection phase)."""
    return torch.optim.Adam(
        [
            {"params": [model.prototypes], "lr": cfg.lr_prototypes},
            {"params": model.last_layer.parameters(), "lr": cfg.lr_last},
        ]
    )


def antitype_distances(prototypes: torch.Tensor, q: torch.Tensor) -> dict:
    """Plain L2 distances prototype -> nearest antitype: min over all pairs and mean over prototypes."""
    if q.numel() == 0:
        return {"min_dist_antitype": None, "mean_dist_antitype": None}
    with torch.no_grad():
        nearest = torch.cdist(prototypes.float(), q.float()).amin(dim=1)  # (P,)
    return {"min_dist_antitype": float(nearest.min()), "mean_dist_antitype": float(nearest.mean())}


def revision_loss(model, logits, min_d, y, q, cfg: ReviseConfig) -> tuple[torch.Tensor, dict]:
    """The deselection loss and its (detached) parts."""
    ident = model.class_identity
    terms = {
        "crs_ent": losses.cross_entropy(logits, y),
        "l1": losses.l1_wrong_class(model.last_layer.weight, ident),
        "refine": losses.refine(model.prototypes, q, distance=cfg.refine_distance, reduce=cfg.refine_reduce),
        "con": losses.con_hinge(model.prototypes),
    }
    coefs = {"crs_ent": 1.0, "l1": cfg.lam_l1, "refine": cfg.lam_refine, "con": cfg.lam_con}
    if cfg.lam_clst:
        terms["clst"], coefs["clst"] = losses.cluster_cost(min_d, y, ident), cfg.lam_clst
    if cfg.lam_sep:
        terms["sep"], coefs["sep"] = losses.separation_cost(min_d, y, ident), -cfg.lam_sep
    total = sum(coefs[k] * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}


def cells_last(z: torch.Tensor, device) -> torch.Tensor:
    """Cached latents (N, D, H, W), any float dtype -> (N, H*W, D) float32 on `device`, contiguous."""
    return z.to(device, torch.float32).flatten(2).transpose(1, 2).contiguous()


def min_distances_at_argmin(model, zc: torch.Tensor) -> torch.Tensor:
    """Latents in cells-last layout (B, H*W, D) -> min over the grid of the squared distances (B, P),
    differentiable in the prototypes.

    The min sends gradient only to each prototype's nearest cell, so the nearest cells are found
    without autograd, with one (P, D) x (D, B*H*W) matmul (|p|^2 is the same for every cell and is
    left out), and only the (B, P) winning cells are recomputed with autograd, as exact differences:
    the backward pass is an index, not a second big matmul. Same value and gradient as the min in
    `model.head` up to rounding; about 1.5x faster per step on a CPU.
    """
    B, HW, D = zc.shape
    p = model.prototypes
    with torch.no_grad():
        zp = (p.to(zc.dtype) @ zc.reshape(B * HW, D).T).view(-1, B, HW)  # (P, B, HW)
        cell = (zc.square().sum(dim=2)[None] - 2 * zp).argmin(dim=2).T  # (B, P), argmin over a contiguous dim
    near = zc[torch.arange(B, device=zc.device)[:, None], cell]  # (B, P, D): z at each winning cell
    return (near - p[None].to(near.dtype)).square().sum(dim=2)


def revise_epoch(
    model,
    opt,
    z: torch.Tensor,
    y: torch.Tensor,
    q: torch.Tensor,
    cfg: ReviseConfig,
    generator: torch.Generator,
    step_scale: torch.Tensor | None = None,
) -> dict:
    """One pass over cached latents z in cells-last layout (N, H*W, D) (`cells_last`), in shuffled batches.

    `step_scale` (P, 1): each prototype's learning rate as a fraction of lr_prototypes (None: all 1).

    Returns the epoch means of the loss parts and the train accuracy seen while training. Sums stay
    on the device (no sync per batch).
    """
    dev = model.prototypes.device
    n = len(y)
    perm = torch.randperm(n, generator=generator).to(dev)
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=dev)
    for i in range(0, n, cfg.batch_size):
        idx = perm[i : i + cfg.batch_size]
        yb = y[idx]
        min_d = min_distances_at_argmin(model, z[idx])
        logits = model.classify(min_d)
        loss, parts = revision_loss(model, logits, min_d, yb, q, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step_scale is None:
            opt.step()
        else:
            # Adam with a per-prototype learning rate: its update is proportional to lr, so scaling
            # the update of a row is Adam at lr * scale for that prototype (its moments are unchanged).
            before = model.prototypes.detach().clone()
            opt.step()
            with torch.no_grad():
                model.prototypes.copy_(torch.lerp(before, model.prototypes, step_scale))
        parts["loss"] = loss.detach()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
    out = {k: float(v) / max(n, 1) for k, v in sums.items()}
    out["train_accuracy"] = float(correct) / max(n, 1)
    return out


def epoch_metrics(model, q: torch.Tensor, cfg: ReviseConfig) -> dict:
    """Refine, Con (hinge, count) and antitype distances of the prototypes as they are now."""
    with torch.no_grad():
        p = model.prototypes
        return {
            "refine_now": float(losses.refine(p, q, cfg.refine_distance, cfg.refine_reduce)),
            "con_hinge": float(losses.con_hinge(p)),
            "con_count": int(losses.con_count(p)),
            **antitype_distances(p, q),
        }


def on_antitype(prototypes: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(P,) bool: the prototype sits on an antitype (a push makes a prototype equal to a cached
    latent, and an antitype is such a pushed vector, so the rejected ones are exactly these)."""
    if q.numel() == 0:
        return torch.zeros(len(prototypes), dtype=torch.bool)
    # exact differences: the matmul form of cdist has ~1e-3 cancellation error at distance 0
    d = torch.cdist(prototypes.float(), q.float().to(prototypes.device), compute_mode="donot_use_mm_for_euclid_dist")
    return d.amin(dim=1) < 1e-4


def kept_step_scale(prototypes: torch.Tensor, q: torch.Tensor, cfg: ReviseConfig) -> torch.Tensor | None:
    """(P, 1): 1 for prototypes that sit on an antitype (the rejected ones), lr_kept / lr_prototypes
    for the others; None when lr_kept is unset."""
    if cfg.lr_kept is None or q.numel() == 0:
        return None
    return torch.where(on_antitype(prototypes, q), 1.0, cfg.lr_kept / cfg.lr_prototypes)[:, None]


def revise_prototypes(
    model,
    ztr,
    ytr,
    q: torch.Tensor,
    cfg: ReviseConfig,
    generator: torch.Generator,
    *,
    test: tuple | None = None,
    log: Path | None = None,
    desc: str = "revise",
) -> list[dict]:
    """`cfg.epochs` revision epochs on cached latents; one metrics record per epoch (also appended to `log`).

    `ztr`, `ytr` (and `test` = (z, y)) may live on the CPU; they are moved to the model's device once.
    """
    from protocli.cache import min_distances

    dev = model.prototypes.device
    z, y = cells_last(ztr, dev), ytr.to(dev)  # fp16 cache -> fp32 once, not per batch
    q = q.to(dev, torch.float32)
    zte = yte = None
    if test is not None:
        zte, yte = test[0].to(dev), test[1]
    set_revise_phase(model)
    opt = make_optimizer(model, cfg)
    scale = kept_step_scale(model.prototypes.detach(), q, cfg)
    history = []
    with progress_bar(desc, cfg.epochs) as advance:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            rec = {"phase": "revise", "epoch": epoch, **revise_epoch(model, opt, z, y, q, cfg, generator, scale)}
            rec["seconds"] = round(time.perf_counter() - t0, 4)
            rec.update(epoch_metrics(model, q, cfg))
            if zte is not None:
                rec["test_accuracy"] = accuracy_from_min_d(model, min_distances(model, zte, dev), yte)
            history.append(rec)
            if log is not None:
                append_jsonl(log, rec)
            advance(1, info=f"refine {rec['refine']:.3f} acc {rec['train_accuracy']:.3f}")
    set_phase(model, "frozen")
    return history


def _revise_stage(run, model, train: tuple, test: tuple, q: torch.Tensor, cfg: ReviseConfig,
                  generator: torch.Generator) -> tuple[list[dict], str]:
    """The revision epochs on cached latents (train, test = (z, y)) as a committed "revise" stage."""
    with run.stage("revise") as st:
        hist = revise_prototypes(model, *train, q, cfg, generator, test=test, log=st.dir / "metrics.jsonl")
        st.save_model(model)
        last = hist[-1] if hist else {}
        st.info.update(
            epochs=cfg.epochs,
            antitypes=len(q),
            data=DATA_NOTE,
            config=asdict(cfg),
            train_accuracy=last.get("train_accuracy"),
            test_accuracy=last.get("test_accuracy"),
        )
        return hist, st.id


def _last_layer_stage(run, model, train: tuple, test: tuple, cfg: ReviseConfig, generator: torch.Generator,
                      rec: dict) -> tuple[dict, str]:
    """The last-layer fine-tune on min distances (train, test = (min_d, y)) as a committed "last" stage;
    `rec` (the accuracies after the push) is what it reports when cfg.last_epochs is 0."""
    with run.stage("last") as st:
        if cfg.last_epochs > 0:
            rec = train_last_layer(model, *train, epochs=cfg.last_epochs, lr=cfg.lr_last, l1=cfg.lam_l1,
                                   batch_size=cfg.batch_size, generator=generator, test=test,
                                   log=st.dir / "metrics.jsonl")
        st.save_model(model)
        st.info.update(train_accuracy=rec["train_accuracy"], test_accuracy=rec["test_accuracy"])
        return rec, st.id


def revise_model(
    run, model, cub, q: torch.Tensor, cfg: ReviseConfig, device, generator: torch.Generator,
    splits: tuple | None = None,
) -> dict:
    """Revision epochs -> push -> last-layer fine-tune, each a committed stage. Returns accuracies and ids.

    `splits`: the run's latents as `cache.run_latents` returns them, when the caller has them already
    (the encoder is frozen, so they stay valid across rounds)."""
    from protocli.cache import min_distances, run_latents

    cfg.check()
    t0 = time.perf_counter()
    ztr, ytr, zte, yte = splits or run_latents(run, model, cub, device)

    def accs() -> tuple[float, float]:
        return accuracies_on_cache(model, (zte, yte), (ztr, ytr), device)

    before, train_before = accs()
    # The accepted prototypes as they were pushed: what the user's verdicts call object-like.
    accepted = on_antitype(model.prototypes.detach().cpu(), q).logical_not()
    accepted = model.prototypes.detach().cpu()[accepted].clone()
    hist, revise_id = _revise_stage(run, model, (ztr, ytr), (zte, yte), q, cfg, generator)
    revised, _ = accs()
    pushed = push_model(run, model, cub, ztr, ytr, device, avoid=q if cfg.push_avoid else None,
                        keep=accepted if cfg.push_avoid else None, margin=cfg.push_margin,
                        distinct=cfg.push_distinct,
                        box_map=cfg.box_map)
    md_tr, md_te = min_distances(model, ztr, device), min_distances(model, zte, device)
    after_push = accuracy_from_min_d(model, md_te, yte)
    train_after_push = accuracy_from_min_d(model, md_tr, ytr)
    rec = {"test_accuracy": after_push, "train_accuracy": train_after_push}
    rec, last_id = _last_layer_stage(run, model, (md_tr, ytr), (md_te, yte), cfg, generator, rec)
    secs = [h["seconds"] for h in hist]
    return {
        "run": str(run.path),
        "data": DATA_NOTE,
        "antitypes": len(q),
        "epochs": cfg.epochs,
        "accuracy_before": before,
        "accuracy_revised": revised,
        "accuracy_pushed": after_push,
        "accuracy_after": rec["test_accuracy"],
        "train_accuracy_before": train_before,
        "train_accuracy_pushed": train_after_push,
        "train_accuracy": rec["train_accuracy"],
        "first_epoch": _brief(hist[0]) if hist else None,
        "last_epoch": _brief(hist[-1]) if hist else None,
        "seconds_per_epoch": round(sum(secs) / len(secs), 4) if secs else None,
        "stages": [revise_id, pushed["push"], last_id],
        "push": pushed["push"],
        "unique_prototypes": pushed["unique"],
        "seconds": round(time.perf_counter() - t0, 2),
        "config": asdict(cfg),
    }


def _brief(rec: dict) -> dict:
    keys = (
        "refine",
        "con",
        "con_count",
        "min_dist_antitype",
        "mean_dist_antitype",
        "loss",
        "train_accuracy",
        "test_accuracy",
    )
    return {k: rec.get(k) for k in keys}


def antitype_matrix(run, antitypes: Path | None, num_prototypes: int, dim: int) -> torch.Tensor:
    """Q: every antitype vector in the decisions file, (S, D) float32. BadInput when there is none."""
    ants, path = load_for_run(run, antitypes, num_prototypes, dim)
    q = torch.from_numpy(ants.vectors(dim)).float().reshape(-1, dim)
    if len(q) == 0:
        raise BadInput(
            "no antitypes to revise away from; reject prototypes first: "
            "protocli simulate RUN, or protocli review RUN",
            path,
        )
    return q


def revise_run(
    run_dir: Path,
    cfg: ReviseConfig | None = None,
    antitypes: Path | None = None,
    out: Path | None = None,
    device=None,
    generator: torch.Generator | None = None,
) -> dict:
    """Open (or fork to `out`) a run and revise it against its antitypes (see `revise_model`)."""
    from protocli.run import Run

    cfg = cfg or ReviseConfig()
    cfg.check()
    device = device or torch.device("cpu")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    run = Run.open(run_dir)
    model = run.load_model(device)
    q = antitype_matrix(run, antitypes, model.num_prototypes, model.cfg.proto_dim)
    source = str(run.path)
    if out is not None:
        run = run.fork(out)
    info(f"revising {model.num_prototypes} prototypes against {len(q)} antitypes on the {DATA_NOTE}")
    result = revise_model(run, model, run.cub(), q, cfg, device, generator)
    if out is not None:
        result["forked_from"] = source
    return result
