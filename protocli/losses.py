"""Loss terms as plain functions on tensors -> 0-dim tensors (con_count: a 0-dim int64 metric).

ProtoPNet (Chen et al. 2019): CE + 0.8 Clst - 0.08 Sep + 1e-4 L1, the sign of Sep carried by its
coefficient. Revision (Gerstenberger et al.): Refine, a normalised similarity between prototypes and
antitypes (rejected prototype vectors), and Con, a hinge that keeps prototypes in [0, 1]^D.

`min_d` (B, P) are squared latent distances, `class_identity` (P, K) is one-hot, `last_weight` is the
last layer's (K, P) weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_COEFS = {"crs_ent": 1.0, "clst": 0.8, "sep": -0.08, "l1": 1e-4}


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def _masked_min_mean(min_d: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # The original computes max_dist - max((max_dist - d) * mask) with max_dist = D, which is only
    # right while every distance stays below D, i.e. while prototypes stay in [0, 1]^D. Filling the
    # excluded entries with +inf before the min holds for any distance; where() sends them no gradient.
    # A row with nothing to keep (a one-class problem has no other-class prototypes) counts 0.
    filled = torch.where(keep, min_d, torch.full_like(min_d, math.inf))
    per_image = filled.amin(dim=1)
    per_image = torch.where(torch.isfinite(per_image), per_image, torch.zeros_like(per_image))
    return per_image.mean()


def cluster_cost(min_d: torch.Tensor, y: torch.Tensor, class_identity: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the min distance to any prototype of the image's own class."""
    own = class_identity[:, y].T.bool()  # (B, P)
    return _masked_min_mean(min_d, own)


def separation_cost(min_d: torch.Tensor, y: torch.Tensor, class_identity: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the min distance to any prototype of another class (maximised: the
    caller's coefficient is negative)."""
    own = class_identity[:, y].T.bool()
    return _masked_min_mean(min_d, ~own)


def l1_wrong_class(last_weight: torch.Tensor, class_identity: torch.Tensor) -> torch.Tensor:
    """Sum of |W[k, j]| over the connections from prototype j to classes k other than its own."""
    return (last_weight * (1 - class_identity.T.to(last_weight.dtype))).abs().sum()


def _pair_sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # (P, D), (S, D) -> (P, S) squared distances via one matmul; used without grad, to pick pairs.
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None, :]).clamp_min(0)


def refine(
    prototypes: torch.Tensor,
    antitypes: torch.Tensor,
    distance: str = "l2",
    reduce: str = "max",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Similarity of prototypes (P, D) to antitypes (S, D), normalised to [0, 1]; 1 = on an antitype.

    sim_js = log((d_js + 1) / (d_js + eps)) / log(1 / eps), d_js the plain ("l2", the authors' code)
    or squared ("squared", the paper's text) Euclidean distance. reduce="max": max over all (j, s)
    (the authors' code: each step moves only the closest pair); reduce="mean": mean over j of the max
    over s (every prototype near an antitype is pushed). With no antitypes: 0, still in the graph.

    sim decreases in d, so max over s of sim_js = sim of the nearest antitype. The nearest antitype
    per prototype is chosen with a matmul (no grad, O(P S) memory) and its distance recomputed from
    the difference vector, so d is exact near 0 (the matmul form cancels badly there and sim is
    steepest there), and a prototype sitting on an antitype gives exactly 1.

    Gradient at d = 0: zero, whichever distance. Squared: d(|p - q|^2)/dp = 2 (p - q) = 0. Plain L2
    has no derivative at 0; torch.cdist returns 0 there, sqrt(d2) would give 0 * inf = NaN, so we use
    sqrt(clamp(d2, tiny)), finite everywhere. A prototype exactly on an antitype is therefore moved
    off by the other terms (CE, L1) first, after which Refine takes over with a large gradient.
    """
    if distance not in ("l2", "squared"):
        raise ValueError(f"refine: distance must be 'l2' or 'squared', got {distance!r}")
    if reduce not in ("max", "mean"):
        raise ValueError(f"refine: reduce must be 'max' or 'mean', got {reduce!r}")
    if antitypes.numel() == 0 or prototypes.numel() == 0:
        return prototypes.sum() * 0.0
    dtype = torch.promote_types(prototypes.dtype, torch.float32)
    # No autocast here: a bf16 matmul could pick the wrong nearest antitype.
    with torch.autocast(device_type=prototypes.device.type, enabled=False):
        p = prototypes.to(dtype)
        q = antitypes.to(device=p.device, dtype=dtype)
        with torch.no_grad():
            nearest = _pair_sqdist(p, q).argmin(dim=1)  # (P,)
        d = (p - q[nearest]).square().sum(dim=1)  # (P,) exact squared distances, with grad
    if distance == "l2":
        tiny = torch.finfo(dtype).tiny
        d = torch.where(d > 0, d.clamp_min(tiny).sqrt(), torch.zeros_like(d))
    sim = torch.log((d + 1) / (d + eps)) / math.log(1 / eps)
    # At d = 0 the ratio is 1 up to rounding of the two logs; make it exactly 1 (the gradient there is
    # 0 either way, see above).
    sim = torch.where(d == 0, torch.ones_like(sim), sim)
    return sim.amax() if reduce == "max" else sim.mean()


def con_hinge(prototypes: torch.Tensor) -> torch.Tensor:
    """Sum over entries of how far each lies outside [0, 1]: relu(p - 1) + relu(-p)."""
    return (F.relu(prototypes - 1) + F.relu(-prototypes)).sum()


def con_count(prototypes: torch.Tensor) -> torch.Tensor:
    """Number of prototype entries outside [0, 1] (the paper's Con; no gradient: a metric)."""
    with torch.no_grad():
        return ((prototypes < 0) | (prototypes > 1)).sum()


def protopnet_loss(
    logits: torch.Tensor,
    min_d: torch.Tensor,
    y: torch.Tensor,
    model: torch.nn.Module,
    coefs: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CE + clst * Clst + sep * Sep + l1 * L1 (defaults 1, 0.8, -0.08, 1e-4) -> (total, parts).

    `model` supplies class_identity and last_layer.weight; `coefs` overrides the defaults per key.
    `parts` holds the unweighted terms and the total as floats, for logging.
    """
    c = {**DEFAULT_COEFS, **(coefs or {})}
    unknown = set(c) - set(DEFAULT_COEFS)
    if unknown:
        raise ValueError(f"protopnet_loss: unknown coefficient {sorted(unknown)[0]!r}")
    identity = model.class_identity
    terms = {
        "crs_ent": cross_entropy(logits, y),
        "clst": cluster_cost(min_d, y, identity),
        "sep": separation_cost(min_d, y, identity),
        "l1": l1_wrong_class(model.last_layer.weight, identity),
    }
    total = sum(c[k] * v for k, v in terms.items())
    parts = {k: float(v.detach()) for k, v in terms.items()}
    parts["total"] = float(total.detach())
    return total, parts
