"""`protocli prune`: run + cached training latents -> the original ProtoPNet's pruning, as masking.

ProtoPNet (Chen et al.) prunes a prototype when, among the k training patches nearest to it, fewer
than `threshold` come from its own class (k = 6 and threshold = 3 in the original): such a prototype
sits on something that several classes share. The nearest patches are taken as in the original's
`find_k_nearest_patches_to_prototypes`: one patch per image (its closest cell), over the
unaugmented training images of every class, for the prototypes as they are now (run it after a
push, as the original does). Then the last layer alone is retrained (100 epochs, Adam 1e-4 in the
original).

protocli *masks* the pruned prototypes (prototype_mask 0, a "prune" stage) instead of slicing them
out of the model, as it does for rejected prototypes (`protocli mask`): the logits are the same,
and prototype indices, antitypes.json and the push pictures stay valid. Prototypes masked before
stay masked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protocli.console import info
from protocli.errors import BadInput
from protocli.mask import check_refit, mask_model  # pruning is masking with ProtoPNet's rule

K = 6  # the original's k
THRESHOLD = 3  # the original's prune_threshold
LAST_EPOCHS = 100  # the original's last-layer epochs after pruning


def prune_candidates(model, z: torch.Tensor, y: torch.Tensor, device, k: int = K, threshold: int = THRESHOLD):
    """(prune flags (P,) bool, own-class counts among the k nearest (P,), nearest images (k, P))."""
    from protocli.nearest import k_nearest_patches

    k = min(k, len(z))
    _, img, _ = k_nearest_patches(model, z, k, device)
    own = (y[img] == model.prototype_class.cpu()[None, :]).sum(0)  # (P,)
    return own < threshold, own, img


def prune_run(
    run_dir: Path,
    k: int = K,
    threshold: int = THRESHOLD,
    last_epochs: int = LAST_EPOCHS,
    lr_last: float = 1e-4,
    out: Path | None = None,
    device=None,
    generator: torch.Generator | None = None,
) -> dict:
    """Open (or fork to `out`) a run, mask the prototypes pruned by the original's rule, fine-tune."""
    from protocli.cache import run_latents
    from protocli.run import Run

    if k < 1:
        raise BadInput(f"--k {k}: must be at least 1")
    if not 0 <= threshold <= k:
        raise BadInput(f"--threshold {threshold}: must be between 0 and --k ({k})")
    device, generator = check_refit(last_epochs, lr_last, device, generator)
    run = Run.open(run_dir)
    push = run.require_push().name  # the original prunes right after a push
    source = str(run.path)
    if out is not None:
        run = run.fork(out)
    model = run.load_model(device)
    cub = run.cub()
    splits = run_latents(run, model, cub, device)
    flags, own, _ = prune_candidates(model, splits[0], splits[1], device, k, threshold)
    pruned = [int(j) for j in torch.nonzero(flags).flatten()]
    was_masked = model.prototype_mask.detach().cpu() <= 0
    newly = int((flags & ~was_masked).sum())
    result = mask_model(run, model, cub, pruned, last_epochs=last_epochs, lr_last=lr_last, device=device,
                        generator=generator, splits=splits, kind="prune",
                        stage_info={"k": k, "threshold": threshold, "pruned": len(pruned)})
    info(f"prune: {len(pruned)} of {model.num_prototypes} prototypes have fewer than {threshold} own-class "
         f"patches among their {k} nearest; {newly} newly masked")
    return {**result, "push": push, "k": k, "threshold": threshold, "pruned": len(pruned),
            "pruned_prototypes": pruned, "newly_masked": newly,
            "own_class_counts": [int(v) for v in own], **({"forked_from": source} if out is not None else {})}
