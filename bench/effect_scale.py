"""The masking effect and the look-alike lists of the review TUI at CUB scale, timing only: 5994
training and 5794 test images, 2000 prototypes of 128 dimensions, 200 classes, random similarities
and vectors (no run needed).

Usage: OMP_NUM_THREADS=1 python bench/effect_scale.py [--device cuda]
Prints the time of one refit step, the step count that fits the 0.6 s budget, the seconds one
effect takes for 10, 200 and 350 rejected prototypes, and the seconds `suspicion.look_alikes` takes
for 2000 prototypes, `suspicion.grid_min` over 5994 latent grids of 128 x 7 x 7 (the rest of
those scores) on the device, and `edge_colour.edge_colour` for 2000 boxes on 224-px pictures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protocli.effect import MaskEffect  # noqa: E402


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the effect and grid_min run")
    dev = torch.device(ap.parse_args().device)
    n_tr, n_te, P, K = 5994, 5794, 2000, 200
    g = torch.Generator().manual_seed(0)
    e = MaskEffect.__new__(MaskEffect)  # the fields __init__ would fill from a run
    e.sim_tr, e.sim_te = torch.rand(n_tr, P, generator=g).to(dev), torch.rand(n_te, P, generator=g).to(dev)
    e.y_tr = torch.randint(0, K, (n_tr,), generator=g).to(dev)
    e.y_te = torch.randint(0, K, (n_te,), generator=g).to(dev)
    e.mask, e.weight = torch.ones(P, device=dev), (torch.randn(K, P, generator=g) * 0.01).to(dev)
    identity = torch.zeros(P, K)
    identity[torch.arange(P), torch.arange(P) // (P // K)] = 1
    e.wrong, e.l1, e.budget_s, e.lr = (1 - identity.T).to(dev), 1e-4, 0.6, 1e-3
    e.logits_te = (e.sim_te * e.mask) @ e.weight.T
    e.before = e._accuracy_of(e.logits_te)
    step = e._time_step()
    e.steps = max(1, min(60, int(e.budget_s / step)))
    print(f"torch threads {torch.get_num_threads()}: one refit step {step:.3f} s -> {e.steps} steps")
    for n in (10, 200, 350):
        r = e(list(range(n)))
        print(f"{n} rejected: {r['seconds']} s, {r['refit_steps']} refit steps")
    import time

    from protocli.suspicion import look_alikes

    v = torch.rand(P, 128, generator=g).numpy()
    doc = {"prototypes": [{"image": f"img{j // 4}", "cell": [j % 2, 0]} for j in range(P)]}
    t0 = time.perf_counter()
    look_alikes(v, doc, scores=torch.rand(P, generator=g).numpy())
    print(f"look-alike lists of {P} prototypes: {time.perf_counter() - t0:.2f} s")
    from protocli.suspicion import grid_min

    z, protos = torch.rand(n_tr, 128, 7, 7, generator=g).to(dev), torch.rand(P, 128, generator=g).to(dev)
    for _ in range(2):  # the first call pays for allocations and kernel set-up
        t0 = time.perf_counter()
        m, _a = grid_min(z, protos)
        float(m.sum())  # waits for the device
    print(f"grid_min of {n_tr} grids x {P} prototypes on {dev}: {time.perf_counter() - t0:.2f} s")
    from protocli.edge_colour import edge_colour

    # pictures like the synthetic data's at 224 px: a striped background, an object disc, pixel noise
    # (on pure noise every pixel is an outlier and the pruning in edge_colour saves nothing)
    rng = np.random.default_rng(0)
    S = 224
    yy, xx = np.mgrid[:S, :S]
    pictures, protos = {}, []
    for i in range(P):
        c0, c1, obj = rng.integers(0, 256, (3, 3))
        img = np.where(((yy + xx) // rng.integers(4, 16) % 2)[..., None] == 0, c0, c1)
        img = np.where((((yy - S / 2) ** 2 + (xx - S / 2) ** 2) < (S * rng.uniform(0.2, 0.35)) ** 2)[..., None], obj, img)
        pictures[i] = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        w, h = rng.integers(S // 7, S // 2, 2)
        x0, y0 = rng.integers(0, S - w), rng.integers(0, S - h)
        protos.append({"image_index": i, "box": [int(x0), int(y0), int(x0 + w), int(y0 + h)]})
    t0 = time.perf_counter()
    edge_colour(pictures, {"img_size": S, "prototypes": protos}, device=dev)
    print(f"edge_colour of {P} boxes on {S}-px pictures on {dev}: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
