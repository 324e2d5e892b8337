"""`protocli simulate`, `review`, `mask`, `revise`, `rounds`: deciding on prototypes and revising them."""

from __future__ import annotations

from pathlib import Path

import typer

from protocli.cli.common import (
    ANTITYPES_OPT,
    DEVICE_OPT,
    JSON_OPT,
    LR_KEPT_OPT,
    LR_PROTOTYPES_OPT,
    OUT_RUN_OPT,
    QUIET_OPT,
    SEED_OPT,
    Criterion,
    Distance,
    Graphics,
    Reduce,
    User,
    execute,
    kv,
)

app = typer.Typer(rich_markup_mode=None)


@app.command()
def simulate(
    run: Path = typer.Argument(..., help="Run folder (needs a push and a dataset with masks)."),
    criterion: Criterion = typer.Option(Criterion.box, help="box: the 95th-percentile box misses the object; "
                                        "cell: the prototype's latent cell holds no object."),
    antitypes: Path | None = ANTITYPES_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """The simulated user: reject prototypes whose patch does not touch the object."""

    def go():
        from protocli.simulate import simulate_run

        return simulate_run(run, criterion=criterion.value, antitypes=antitypes)

    execute(go, as_json, quiet, kv("simulated review"))


@app.command()
def review(
    run: Path = typer.Argument(..., help="Run folder (needs a push)."),
    graphics: Graphics = typer.Option(Graphics.auto, help="Pictures: auto, kitty, sixel, halfcell or none."),
    push_id: str | None = typer.Option(None, "--push", help="Review this push instead of the latest."),
    as_json: bool = JSON_OPT,
):
    """Open the review TUI: look at every prototype, reject the ones that show background."""

    def go():
        from protocli.review import review as review_app

        return review_app(run, graphics=graphics.value, push=push_id)

    execute(go, as_json, False, kv("review"))


@app.command()
def mask(
    run: Path = typer.Argument(..., help="Run folder."),
    antitypes: Path | None = ANTITYPES_OPT,
    last_epochs: int = typer.Option(20, help="Last-layer epochs after masking (on cached latents)."),
    lr_last: float = typer.Option(1e-4, help="Learning rate of the last layer."),
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Masking condition: rejected prototypes stop voting, then the last layer is retrained."""

    def go():
        from protocli import distributed
        from protocli.mask import mask_run
        from protocli.runtime import seed_everything

        dist, dev = distributed.setup(device)
        if not distributed.share_cache(run, dist, dev):
            return {}
        return mask_run(run, antitypes=antitypes, last_epochs=last_epochs, lr_last=lr_last, out=out,
                        device=dev, generator=seed_everything(seed))

    execute(go, as_json, quiet, kv("masking"), spread=True)


@app.command()
def revise(
    run: Path = typer.Argument(..., help="Run folder."),
    antitypes: Path | None = ANTITYPES_OPT,
    epochs: int = typer.Option(30, help="Revision epochs (prototypes and last layer, encoder frozen)."),
    lam_refine: float = typer.Option(50.0, help="Weight of the Refine loss."),
    lam_con: float = typer.Option(1.0, help="Weight of the Con hinge (keeps prototypes in [0,1])."),
    lam_l1: float = typer.Option(1e-4, help="Weight of L1 on wrong-class last-layer weights."),
    lam_clst: float = typer.Option(0.0, help="Weight of the cluster cost (paper lists it; code uses 0)."),
    lam_sep: float = typer.Option(0.0, help="Weight of the separation cost, subtracted."),
    refine_distance: Distance = typer.Option(Distance.squared, help="Distance in Refine: squared (paper text; default, measured in docs/revision.md) or l2 (authors' code)."),
    refine_reduce: Reduce = typer.Option(Reduce.mean, help="mean of per-prototype max (default), or max over all pairs (authors' code)."),
    lr_prototypes: float = LR_PROTOTYPES_OPT,
    lr_kept: float | None = LR_KEPT_OPT,
    lr_last: float = typer.Option(1e-4, help="Learning rate of the last layer."),
    last_epochs: int = typer.Option(20, help="Last-layer fine-tune epochs after the revision push."),
    batch_size: int = typer.Option(80, help="Batch size (on cached latents)."),
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Revise prototypes away from the antitypes (Refine loss), then push and fine-tune the last layer."""

    def go():
        from protocli import distributed
        from protocli.revise import ReviseConfig, revise_run
        from protocli.runtime import seed_everything

        cfg = ReviseConfig(epochs=epochs, lam_refine=lam_refine, lam_con=lam_con, lam_l1=lam_l1,
                           lam_clst=lam_clst, lam_sep=lam_sep, refine_distance=refine_distance.value,
                           refine_reduce=refine_reduce.value, lr_prototypes=lr_prototypes, lr_kept=lr_kept,
                           lr_last=lr_last,
                           last_epochs=last_epochs, batch_size=batch_size)
        dist, dev = distributed.setup(device)
        if not distributed.share_cache(run, dist, dev):
            return {}
        return revise_run(run, cfg, antitypes=antitypes, out=out, device=dev, generator=seed_everything(seed))

    execute(go, as_json, quiet, kv("revision"), spread=True)


@app.command()
def rounds(
    run: Path = typer.Argument(..., help="Run folder."),
    n_rounds: int = typer.Option(5, "--rounds", help="Rounds of push -> consult the user -> revise."),
    user: User = typer.Option(User.simulated, help="simulated (needs masks) or tui (you, in the review TUI)."),
    epochs: int = typer.Option(30, help="Revision epochs per round."),
    criterion: Criterion = typer.Option(Criterion.box, help="Simulated user's non-object criterion."),
    lr_prototypes: float = LR_PROTOTYPES_OPT,
    lr_kept: float | None = LR_KEPT_OPT,
    finally_mask: bool = typer.Option(False, "--final-mask/--no-final-mask",
                                      help="After the rounds, mask prototypes still rejected and fine-tune."),
    graphics: Graphics = typer.Option(Graphics.auto, help="Pictures in the TUI (with --user tui)."),
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Iterative prototype revision, Algorithm 1 of the paper: push, consult the user, revise; repeated."""

    def go():
        from protocli import distributed
        from protocli.revise import ReviseConfig
        from protocli.rounds import rounds_run
        from protocli.runtime import seed_everything

        cfg = ReviseConfig(lr_prototypes=lr_prototypes, lr_kept=lr_kept)
        dist, dev = distributed.setup(device)
        if not distributed.share_cache(run, dist, dev):
            return {}
        return rounds_run(run, n_rounds=n_rounds, user=user.value, epochs=epochs, criterion=criterion.value,
                          final_mask=finally_mask, graphics=graphics.value, out=out,
                          device=dev, generator=seed_everything(seed), cfg=cfg)

    def show(result):
        from protocli.console import print_table

        # A subset that fits an 80-column terminal; --json and RUN/rounds.json hold every column.
        cols = ["round", "non_object", "clicks", "antitypes", "accuracy_before_ft", "accuracy_after_ft",
                "overlap_ge_75"]
        rows = result.get("rounds", [])
        print_table("rounds", rows, [c for c in cols if rows and c in rows[0]])

    execute(go, as_json, quiet, show, spread=True)
