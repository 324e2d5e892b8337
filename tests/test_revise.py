"""Revision on cached latents: the loss is the documented sum, an epoch moves prototypes away from
the antitypes and back into [0, 1], only prototypes and the last layer change, and `revise` commits
revise -> push -> last stages with per-epoch metrics."""

from __future__ import annotations

import math

import pytest
import torch

from protocli import losses
from protocli.cache import latents
from protocli.errors import BadInput
from protocli.revise import ReviseConfig, on_antitype, revise_prototypes, revise_run, revision_loss
from protocli.run import Run
from protocli.runfiles import read_push_doc

G = torch.Generator


def _cached(run_dir):
    run = Run.open(run_dir)
    model = run.load_model()
    z, y = latents(
        model, run.cub(), "train", crop=run.crop, cache_dir=run.cache_dir, device=torch.device("cpu")
    )
    return run, model, z, y


@pytest.mark.parametrize("distance,reduce", [("l2", "max"), ("squared", "mean")])
def test_revision_loss_is_the_documented_sum(tiny_run, distance, reduce):
    _, model, z, y = _cached(tiny_run)
    q = model.prototypes.detach()[:3] + 0.05
    cfg = ReviseConfig(
        lam_refine=50,
        lam_con=1,
        lam_l1=1e-4,
        lam_clst=0.8,
        lam_sep=0.08,
        refine_distance=distance,
        refine_reduce=reduce,
    )
    with torch.no_grad():
        model.prototypes[0, 0] = 1.4  # make Con non-zero
        logits, min_d = model.head(z[:8].float())
        total, parts = revision_loss(model, logits, min_d, y[:8], q, cfg)
        ident = model.class_identity
        want = (
            losses.cross_entropy(logits, y[:8])
            + 1e-4 * losses.l1_wrong_class(model.last_layer.weight, ident)
            + 50 * losses.refine(model.prototypes, q, distance, reduce)
            + losses.con_hinge(model.prototypes)
            + 0.8 * losses.cluster_cost(min_d, y[:8], ident)
            - 0.08 * losses.separation_cost(min_d, y[:8], ident)
        )
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["con"].item() == pytest.approx(0.4, rel=1e-5)
    # Refine by its formula: log((d+1)/(d+eps)) / log(1/eps), max over pairs, or mean over prototypes
    # of the max over antitypes; d plain or squared L2
    d = torch.cdist(model.prototypes.detach().double(), q.double())
    d = d.square() if distance == "squared" else d
    sim = torch.log((d + 1) / (d + 1e-4)) / math.log(1e4)
    want_r = sim.max() if reduce == "max" else sim.max(dim=1).values.mean()
    assert parts["refine"].item() == pytest.approx(want_r.item(), rel=1e-5)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_one_epoch_moves_prototypes_away_from_the_antitypes(tiny_run, reduce):
    _, model, z, y = _cached(tiny_run)
    # antitypes near (not on) some prototypes: the case after the first step of a round
    q = model.prototypes.detach()[[0, 3, 5]] + 0.01 * torch.rand(
        3, model.cfg.proto_dim, generator=G().manual_seed(0)
    )
    before = torch.cdist(model.prototypes.detach(), q).min().item()
    cfg = ReviseConfig(epochs=1, batch_size=8, refine_reduce=reduce, lr_kept=None)  # all prototypes move
    hist = revise_prototypes(model, z, y, q, cfg, G().manual_seed(0))
    after = torch.cdist(model.prototypes.detach(), q).min().item()
    assert after > before
    assert hist[0]["min_dist_antitype"] == pytest.approx(after, rel=1e-5)


def test_lr_kept_is_a_per_prototype_adam_learning_rate(tiny_run):
    """With lr_kept, prototypes on an antitype step at lr_prototypes and the others at lr_kept: Adam
    moves a coordinate by about lr per step at most, so the kept rows stay within lr_kept x steps."""
    _, model, z, y = _cached(tiny_run)
    start = model.prototypes.detach().clone()
    on = [1, 4]
    q = start[on].clone()  # pushed vectors of rejected prototypes: they sit exactly on Q
    cfg = ReviseConfig(epochs=2, batch_size=8, lr_prototypes=3e-2, lr_kept=1e-3, lam_con=0.0)
    revise_prototypes(model, z, y, q, cfg, G().manual_seed(0))
    moved = (model.prototypes.detach() - start).abs().amax(dim=1)
    kept = [j for j in range(model.num_prototypes) if j not in on]
    steps = math.ceil(len(y) / cfg.batch_size) * cfg.epochs
    # Adam moves a coordinate by at most about lr per step
    assert float(moved[kept].max()) <= 1e-3 * steps * 1.01
    assert float(moved[on].min()) > 1e-3 * steps * 1.5
    assert ReviseConfig().lr_kept is None or ReviseConfig().lr_kept < ReviseConfig().lr_prototypes
    with pytest.raises(BadInput, match="--lr-kept"):
        ReviseConfig(lr_kept=-1.0).check()


def test_con_pulls_prototypes_back_into_the_unit_cube(tiny_run):
    _, model, z, y = _cached(tiny_run)
    with torch.no_grad():
        model.prototypes[:, :3] = 1.3
        model.prototypes[:, 3:5] = -0.2
    start = int(losses.con_count(model.prototypes))
    cfg = ReviseConfig(epochs=3, batch_size=8, lam_refine=0.0, lr_prototypes=0.05)
    hist = revise_prototypes(model, z, y, torch.empty(0, model.cfg.proto_dim), cfg, G().manual_seed(0))
    assert hist[-1]["con_hinge"] < hist[0]["con"] and hist[-1]["con_count"] < start
    assert float(losses.con_hinge(model.prototypes)) < 0.1 * (0.3 * 3 + 0.2 * 2) * model.num_prototypes


def test_only_prototypes_and_last_layer_train(tiny_run, decide):
    """Default config: the rejected prototypes (those on an antitype) and the last layer train; the
    accepted prototypes (lr_kept 0), the backbone and the add-on stay exactly as they were."""
    _, model, z, y = _cached(tiny_run)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    lone = decide.lone(tiny_run)  # no other prototype holds their vectors, so none else is on Q
    assert len(lone) >= 2, lone
    on = [lone[0], lone[-1]]
    q = model.prototypes.detach()[on].clone()  # pushed vectors of rejected prototypes: they sit on Q
    assert ReviseConfig().lr_kept == 0.0
    revise_prototypes(model, z, y, q, ReviseConfig(epochs=1, batch_size=8), G().manual_seed(0))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, old[k])}
    assert changed == {"prototypes", "last_layer.weight"}
    new = model.prototypes.detach()
    kept = [j for j in range(model.num_prototypes) if j not in on]
    assert torch.equal(new[kept], old["prototypes"][kept])
    assert all(not torch.equal(new[j], old["prototypes"][j]) for j in on)
    assert not any(p.requires_grad for p in model.parameters())  # frozen again afterwards


def test_revise_run_commits_revise_push_last(tiny_run, tmp_path, decide):
    lone = decide.lone(tiny_run)  # no accepted prototype holds the vector of a rejected one
    assert len(lone) >= 2, lone
    rejected = [lone[0], lone[-1]]
    push = decide.reject(tiny_run, rejected)
    before = Run.open(tiny_run).load_model().prototypes.detach().clone()
    q = before[rejected]
    out = tmp_path / "revised"
    cfg = ReviseConfig(epochs=2, last_epochs=2, batch_size=8)
    res = revise_run(tiny_run, cfg, out=out, generator=G().manual_seed(0))
    run = Run.open(out)
    kinds = [s["kind"] for s in run.stage_log()]
    assert kinds[-3:] == ["revise", "push", "last"] and res["stages"] == [
        s["id"] for s in run.stage_log()[-3:]
    ]
    assert len(Run.open(tiny_run).stage_log()) == len(kinds) - 3  # the source run is unchanged
    assert "unaugmented" in res["data"]
    recs = [
        __import__("json").loads(x)
        for x in (run.stage_dirs("revise")[-1] / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(recs) == 2
    assert res["antitypes"] == len(rejected)
    for k in (
        "refine",
        "con",
        "con_hinge",
        "con_count",
        "min_dist_antitype",
        "loss",
        "train_accuracy",
        "test_accuracy",
    ):
        assert k in recs[0], k
    # the pushed prototypes are real latent vectors again
    model = run.load_model()
    z, _ = latents(
        model, run.cub(), "train", crop=run.crop, cache_dir=run.cache_dir, device=torch.device("cpu")
    )
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    # exact differences: cdist's default matmul form has ~1e-3 cancellation error at distance 0
    d = torch.cdist(model.prototypes.detach(), flat, compute_mode="donot_use_mm_for_euclid_dist")
    assert d.min(dim=1).values.max().item() < 1e-6
    # the revision moved the rejected prototypes off their antitypes, and the push (push_avoid) put no
    # prototype back onto a rejected patch; the accepted ones (lr_kept 0) kept their vectors
    assert all(r["min_dist_antitype"] > 0 for r in recs)
    after = model.prototypes.detach()
    assert not on_antitype(after, q).any()
    kept = [j for j in range(len(before)) if j not in rejected]
    torch.testing.assert_close(after[kept], before[kept], rtol=0, atol=1e-4)
    old_doc = read_push_doc(Run.open(tiny_run).path / "stages" / push)
    new_doc = read_push_doc(run.latest_push())
    for j in rejected:
        old_p, new_p = old_doc["prototypes"][j], new_doc["prototypes"][j]
        assert (new_p["image"], new_p["cell"]) != (old_p["image"], old_p["cell"]), j
    for k in ("accuracy_before", "accuracy_pushed", "accuracy_after", "train_accuracy"):
        assert 0.0 <= res[k] <= 1.0


def test_without_antitypes_is_bad_input(tiny_run):
    with pytest.raises(BadInput, match="antitypes"):
        revise_run(tiny_run, ReviseConfig(epochs=1))


def test_config_is_checked(tiny_run):
    with pytest.raises(BadInput, match="refine-distance"):
        revise_run(tiny_run, ReviseConfig(refine_distance="l1"))
    with pytest.raises(BadInput, match="lr-prototypes"):
        revise_run(tiny_run, ReviseConfig(lr_prototypes=0))


def test_fast_min_distances_match_the_model(tiny_run):
    from protocli.revise import cells_last, min_distances_at_argmin

    _, model, z, _ = _cached(tiny_run)
    zb = z[:6].float()
    model.prototypes.requires_grad_(True)
    want = model.head(zb)[1]
    (g_want,) = torch.autograd.grad((want**2).sum(), model.prototypes)
    got = min_distances_at_argmin(model, cells_last(zb, torch.device("cpu")))
    (g_got,) = torch.autograd.grad((got**2).sum(), model.prototypes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-3)


def test_cli_defaults_are_the_config_defaults(monkeypatch, tmp_path):
    """`protocli revise` passes every option; with none given it must build ReviseConfig() exactly."""
    from typer.testing import CliRunner

    import protocli.revise
    from protocli.cli import app

    seen = {}
    monkeypatch.setattr(protocli.revise, "revise_run", lambda run, cfg, **kw: seen.update(cfg=cfg) or {})
    res = CliRunner().invoke(app, ["revise", str(tmp_path), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"] == ReviseConfig()
