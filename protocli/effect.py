"""Masking effect: run + its latest push + a set of rejected prototypes -> test accuracy if they were
masked, at once (no refit) and after a short last-layer refit on the latent cache.

The review TUI shows this after every reject so that the reviewer sees the cost before revising.
It must answer within a second, so everything that does not depend on the rejected set is done once
in `MaskEffect.__init__` (model, cached latents, the min distances of every training and test image
to every prototype), and the refit is short: full-batch Adam from the current last layer, for at
most `steps` steps or `budget_s` seconds (the step count is set from one timed step, so a large run
on a CPU takes fewer steps). `protocli mask` fine-tunes for 20 epochs of mini-batch
Adam at 1e-4; Adam moves every weight by about its learning rate per step, so the refit takes the
same path length in fewer, larger steps: lr = 1e-4 x (mask's step count) / steps. Masked
prototypes are zeroed in the input of the last layer, as `mask` does.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from protocli.errors import BadInput


class MaskEffect:
    def __init__(self, run_dir: Path, push_dir: Path | None = None, device=None, steps: int = 60,
                 lr: float | None = None, budget_s: float = 0.6, mask_epochs: int = 20, mask_lr: float = 1e-4):
        from protocli.cache import min_distances, run_latents
        from protocli.model import log_similarity, pushed_prototypes
        from protocli.run import Run
        from protocli.runtime import pick_device

        self.device = device or pick_device("auto")  # a large run's refit wants the GPU when there is one
        run = Run.open(run_dir)
        push_dir = Path(push_dir) if push_dir is not None else run.require_push()
        model = run.load_model(self.device)
        if not torch.equal(model.prototypes.detach().cpu().float(), pushed_prototypes(push_dir)):
            raise BadInput("the run's prototypes are no longer those of this push", push_dir)
        model.eval()
        ztr, ytr, zte, yte = run_latents(run, model, run.cub(), self.device)
        with torch.no_grad():
            self.sim_tr = log_similarity(min_distances(model, ztr, self.device)).to(self.device)
            self.sim_te = log_similarity(min_distances(model, zte, self.device)).to(self.device)
        self.y_tr, self.y_te = ytr.to(self.device), yte.to(self.device)
        self.mask = model.prototype_mask.detach().clone().float()
        self.weight = model.last_layer.weight.detach().clone().float()
        self.wrong = (1 - model.class_identity.T).float().to(self.device)  # (K, P) wrong-class weights
        tcfg = run.manifest.get("train", {})
        self.l1 = float(tcfg.get("l1", 1e-4))
        mask_steps = mask_epochs * -(-len(ytr) // int(tcfg.get("batch_size", 80)))
        self.budget_s = budget_s
        # As many steps as fit the budget on this machine (timed once), at most `steps`.
        self.steps = max(1, min(steps, int(budget_s / max(self._time_step(), 1e-6))))
        self.lr = lr if lr is not None else mask_lr * mask_steps / self.steps
        with torch.no_grad():  # test logits of the model as it is: a mask only subtracts columns from them
            self.logits_te = (self.sim_te * self.mask) @ self.weight.T
        self.before = self._accuracy_of(self.logits_te)

    def _time_step(self) -> float:
        w = self.weight.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=0.0)
        times = []
        for _ in range(2):  # the first step pays for allocations
            t0 = time.perf_counter()
            loss = F.cross_entropy((self.sim_tr * self.mask) @ w.T, self.y_tr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        return times[-1]

    def _accuracy_of(self, logits: torch.Tensor) -> float:
        return float((logits.argmax(1) == self.y_te).float().mean()) if len(self.y_te) else 0.0

    def _accuracy(self, weight: torch.Tensor, mask: torch.Tensor) -> float:
        with torch.no_grad():
            logits = (self.sim_te * mask) @ weight.T
            return float((logits.argmax(1) == self.y_te).float().mean()) if len(self.y_te) else 0.0

    def __call__(self, rejected: list[int], cancelled=lambda: False) -> dict | None:
        """{masked, accuracy_before, accuracy_masked, accuracy_refit, refit_steps, seconds}; None when cancelled.

        accuracy_refit is None when the time budget allowed no refit step (large runs on a CPU)."""
        t0 = time.perf_counter()
        mask = self.mask.clone()
        idx = torch.as_tensor(sorted(set(rejected)), dtype=torch.long)
        mask[idx] = 0.0
        with torch.no_grad():  # O(N x rejected x K), not a full product: fast for 2000 prototypes too
            drop = (self.sim_te[:, idx] * self.mask[idx]) @ self.weight[:, idx].T
        masked = self._accuracy_of(self.logits_te - drop)
        w = self.weight.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        x = self.sim_tr * mask
        steps = 0
        if rejected:
            while steps < self.steps and time.perf_counter() - t0 < self.budget_s:
                if cancelled():
                    return None
                loss = F.cross_entropy(x @ w.T, self.y_tr) + self.l1 * (w * self.wrong).abs().sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        refit = masked if steps == 0 else self._accuracy(w.detach(), mask)
        return {"masked": len(rejected), "accuracy_before": self.before, "accuracy_masked": masked,
                "accuracy_refit": refit if steps or not rejected else None, "refit_steps": steps,
                "seconds": round(time.perf_counter() - t0, 3)}


def describe(e: dict) -> str:
    """One status-line phrase: 'mask 12: test .842 -> .801 now, .830 refit'."""
    def f(v: float) -> str:
        return f"{v:.3f}".lstrip("0")

    if not e["masked"]:
        return f"test {f(e['accuracy_before'])}, nothing masked"
    text = f"mask {e['masked']}: test {f(e['accuracy_before'])} -> {f(e['accuracy_masked'])} now"
    return text + (f", {f(e['accuracy_refit'])} refit" if e["accuracy_refit"] is not None else "")
