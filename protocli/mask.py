"""`protocli mask`: run + antitypes.json -> the masking condition (a "mask" stage), accuracies before/after.

Condition 3 of Gerstenberger et al.: the prototypes rejected on the latest push get
`prototype_mask` 0, which multiplies their similarity before the last layer, so they no longer
vote; then the last layer alone is retrained (default 20 epochs, Adam 1e-4, as the authors'
`deselection_masking.py`). The authors' final step *deletes* prototypes instead; for inference the
two are the same (a masked column contributes exactly 0 to every logit), and masking keeps the
prototype indices, antitypes.json and the push pictures valid.

With the encoder and the prototypes fixed, the last layer's input (the min distances) is a constant
per image, so the fine-tune runs on the latent cache in seconds. Accuracy is recorded on the test
split (and the train split) before masking, after masking and after the fine-tune.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from protocli.antitypes import load_for_run
from protocli.console import info
from protocli.errors import BadInput
from protocli.metrics import accuracy_from_min_d
from protocli.phases import train_last_layer


def rejected_on_latest_push(
    run, antitypes_path: Path | None, num_prototypes: int, dim: int
) -> tuple[list, str]:
    """Prototype ids rejected on the run's latest push -> (ids, push id). BadInput when undecided."""
    push = run.require_push().name
    ants, path = load_for_run(run, antitypes_path, num_prototypes, dim)
    if not ants.decided(push):
        where = f"decisions on {ants.push}" if ants.push else "no decisions"
        raise BadInput(
            f"no decisions on the latest push {push} ({where}); decide first: "
            "protocli simulate RUN, or protocli review RUN",
            path,
        )
    return ants.rejected(push), push


def _mask(model, rejected: list[int]) -> None:
    """Zero the mask entries of `rejected`; already-masked prototypes stay masked."""
    idx = torch.as_tensor(rejected, dtype=torch.long, device=model.prototype_mask.device)
    with torch.no_grad():
        model.prototype_mask[idx] = 0.0


def mask_model(
    run,
    model,
    cub,
    rejected: list[int],
    *,
    last_epochs: int,
    lr_last: float,
    device,
    generator: torch.Generator,
    batch_size: int | None = None,
    l1: float | None = None,
    splits: tuple | None = None,
    kind: str = "mask",
    stage_info: dict | None = None,
) -> dict:
    """Mask `rejected`, fine-tune the last layer on cached latents, commit a "mask" stage. Returns accuracies.

    `splits`: the run's latents as `cache.run_latents` returns them, when the caller has them already.
    `kind` and `stage_info`: the stage's kind and extra manifest fields (`prune` uses both)."""
    from protocli.cache import min_distances, run_latents

    t0 = time.perf_counter()
    tcfg = run.manifest.get("train", {})
    batch_size = batch_size or int(tcfg.get("batch_size", 80))
    l1 = float(tcfg.get("l1", 1e-4)) if l1 is None else l1
    model.eval()
    ztr, ytr, zte, yte = splits or run_latents(run, model, cub, device)
    # Min distances do not depend on the mask or the last layer: computed once for all three accuracies.
    md_tr, md_te = min_distances(model, ztr, device), min_distances(model, zte, device)

    def accuracies(when: str) -> dict:  # test and train accuracy of the model as it is now
        return {f"accuracy_{when}": accuracy_from_min_d(model, md_te, yte),
                f"train_accuracy_{when}": accuracy_from_min_d(model, md_tr, ytr)}

    acc = accuracies("before")
    _mask(model, rejected)
    acc |= accuracies("masked")
    stage_info = {**(stage_info or {}), "masked": len(rejected), "accuracy_before": acc["accuracy_before"],
                  "accuracy_masked": acc["accuracy_masked"]}
    stage_id = _refit_stage(run, model, kind, (md_tr, ytr, md_te, yte), stage_info, last_epochs=last_epochs,
                            lr_last=lr_last, l1=l1, batch_size=batch_size, generator=generator)
    acc |= accuracies("after")
    info(
        f"masking: {len(rejected)} prototypes masked; test accuracy {acc['accuracy_before']:.3f} -> "
        f"{acc['accuracy_masked']:.3f} -> {acc['accuracy_after']:.3f} after {last_epochs} last-layer epochs"
    )
    return {
        "run": str(run.path),
        "stage": stage_id,
        "masked": len(rejected),
        "masked_prototypes": list(rejected),
        "active_prototypes": int((model.prototype_mask > 0).sum()),
        "prototypes": model.num_prototypes,
        **acc,
        "last_epochs": last_epochs,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _refit_stage(run, model, kind: str, md: tuple, stage_info: dict, *, last_epochs: int, lr_last: float,
                 l1: float, batch_size: int, generator: torch.Generator) -> str:
    """Fine-tune the last layer of the masked model (none with `last_epochs` 0) on the min distances `md`
    = (train, train labels, test, test labels) and commit it as a `kind` stage -> the stage id.
    The manifest gets `stage_info`, the active prototypes and the test accuracy after the fine-tune."""
    md_tr, ytr, md_te, yte = md
    with run.stage(kind) as st:
        acc = None
        if last_epochs > 0:
            acc = train_last_layer(model, md_tr, ytr, epochs=last_epochs, lr=lr_last, l1=l1, batch_size=batch_size,
                                   generator=generator, test=(md_te, yte), log=st.dir / "metrics.jsonl",
                                   desc="last layer (masked)")["test_accuracy"]
        st.save_model(model)
        st.info.update(**stage_info, active_prototypes=int((model.prototype_mask > 0).sum()),
                       accuracy_after=stage_info["accuracy_masked"] if acc is None else acc)
        return st.id


def check_refit(last_epochs: int, lr_last: float, device, generator):
    """The last-layer refit's options checked (BadInput) -> (device, generator) with their defaults;
    shared by mask and prune."""
    if last_epochs < 0:
        raise BadInput(f"--last-epochs {last_epochs}: must be 0 or more")
    if lr_last <= 0:
        raise BadInput(f"--lr-last {lr_last}: must be positive")
    return device or torch.device("cpu"), generator if generator is not None else torch.Generator().manual_seed(0)


def mask_run(
    run_dir: Path,
    antitypes: Path | None = None,
    last_epochs: int = 20,
    lr_last: float = 1e-4,
    out: Path | None = None,
    device=None,
    generator: torch.Generator | None = None,
) -> dict:
    """Open (or fork to `out`) a run, mask its rejected prototypes and fine-tune the last layer."""
    from protocli.run import Run

    device, generator = check_refit(last_epochs, lr_last, device, generator)
    run = Run.open(run_dir)
    model = run.load_model(device)
    # Check the decisions before forking, so a bad call leaves no half-made fork behind.
    rejected, push = rejected_on_latest_push(run, antitypes, model.num_prototypes, model.cfg.proto_dim)
    source = str(run.path)
    if out is not None:
        run = run.fork(out)
    result = mask_model(
        run,
        model,
        run.cub(),
        rejected,
        last_epochs=last_epochs,
        lr_last=lr_last,
        device=device,
        generator=generator,
    )
    result["push"] = push
    if out is not None:
        result["forked_from"] = source
    return result
