"""`protocli simulate`, `review`, `mask`, `revise`, `rounds`: deciding on prototypes and revising them."""

from __future__ import annotations

from pathlib import Path

import typer

from protocli.cli.common import (
    ANTITYPES_OPT,
    BOX_MAP_OPT,
    DEVICE_OPT,
    DISTINCT_OPT,
    GRAPHICS_HELP,
    JSON_OPT,
    LOOK_ALIKES_OPT,
    LR_KEPT_OPT,
    LR_PROTOTYPES_OPT,
    ORDER_OPT,
    OUT_RUN_OPT,
    PUSH_AVOID_OPT,
    PUSH_MARGIN_OPT,
    QUIET_OPT,
    SEED_OPT,
    WAIT_OPT,
    Criterion,
    Distance,
    Graphics,
    Order,
    Reduce,
    User,
    execute,
    kv,
)
from protocli.cli.config import CONFIG_OPT

app = typer.Typer(rich_markup_mode=None)


@app.command()
def simulate(
    run: Path = typer.Argument(..., help="Run folder (needs a push and a dataset with masks)."),
    criterion: Criterion = typer.Option(Criterion.box, help="box: the 95th-percentile box misses the object; "
                                        "cell: the prototype's latent cell holds no object."),
    antitypes: Path | None = ANTITYPES_OPT,
    order: Order = ORDER_OPT,
    look_alikes: bool = LOOK_ALIKES_OPT,
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """The simulated user: reject prototypes whose patch does not touch the object.

    It also reports the review effort of a user who follows the review TUI in --order (with
    --look-alikes: and its look-alike offers): prototypes looked at to find 90% and 100% of the
    non-object ones (looked_90, looked_100) and reject keys pressed (keys)."""

    def go():
        from protocli.simulate import simulate_run

        return simulate_run(run, criterion=criterion.value, antitypes=antitypes, order=order.value,
                            look_alikes=look_alikes)

    execute(go, as_json, quiet, kv("simulated review"), lock=run, wait=wait)


@app.command()
def review(
    run: Path = typer.Argument(..., help="Run folder (needs a push)."),
    graphics: Graphics = typer.Option(Graphics.auto, help=GRAPHICS_HELP),
    push_id: str | None = typer.Option(None, "--push", help="Review this push instead of the latest."),
    order: Order = typer.Option(Order.id, "--order", help="First order of the cards: id, or suspicion "
                                "(background-like first; `s` in the app switches)."),
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
):
    """Open the review TUI: look at every prototype, reject the ones that show background."""

    def go():
        from protocli.review import review as review_app

        return review_app(run, graphics=graphics.value, push=push_id, order=order.value, wait=wait)

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
    wait: bool = WAIT_OPT,
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

    execute(go, as_json, quiet, kv("masking"), lock=None if out else run, wait=wait, spread=True)


# Revise settings, shared by `revise` and `rounds` (the fields of ReviseConfig but `epochs`, whose help
# differs). Defaults are ReviseConfig's; a --config file replaces those the command line does not give.
LAM_REFINE_OPT = typer.Option(50.0, help="Weight of the Refine loss.")
LAM_CON_OPT = typer.Option(1.0, help="Weight of the Con hinge (keeps prototypes in [0,1]).")
LAM_L1_OPT = typer.Option(1e-4, help="Weight of L1 on wrong-class last-layer weights.")
LAM_CLST_OPT = typer.Option(0.0, help="Weight of the cluster cost (paper lists it; code uses 0).")
LAM_SEP_OPT = typer.Option(0.0, help="Weight of the separation cost, subtracted.")
REFINE_DISTANCE_OPT = typer.Option(Distance.squared, help="Distance in Refine: squared (paper text; default, measured in docs/revision.md) or l2 (authors' code).")
REFINE_REDUCE_OPT = typer.Option(Reduce.mean, help="mean of per-prototype max (default), or max over all pairs (authors' code).")
LR_LAST_OPT = typer.Option(1e-4, help="Learning rate of the last layer.")
LAST_EPOCHS_OPT = typer.Option(20, help="Last-layer fine-tune epochs after the revision push (authors' code: 0, "
                               "the last layer trains with the prototypes).")
BATCH_SIZE_OPT = typer.Option(80, help="Batch size (on cached latents).")


def _tui(graphics: str):
    """`rounds --user tui`: ask the person in the review TUI (the core never imports the TUI itself)."""

    def ask(run_dir: Path, order: str) -> None:
        from protocli.review import review as review_app

        review_app(run_dir, graphics=graphics, order=order)

    return ask


def _revise_options(params: dict) -> dict:
    """A command's parameters (its `locals()`) -> the values of ReviseConfig's fields (enums as their
    value). The option names are the field names, so every revise option reaches the config."""
    from dataclasses import fields

    from protocli.revise_config import ReviseConfig

    return {f.name: getattr(params[f.name], "value", params[f.name]) for f in fields(ReviseConfig)}


@app.command()
def revise(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run folder."),
    antitypes: Path | None = ANTITYPES_OPT,
    config: Path | None = CONFIG_OPT,
    epochs: int = typer.Option(30, help="Revision epochs (prototypes and last layer, encoder frozen)."),
    lam_refine: float = LAM_REFINE_OPT,
    lam_con: float = LAM_CON_OPT,
    lam_l1: float = LAM_L1_OPT,
    lam_clst: float = LAM_CLST_OPT,
    lam_sep: float = LAM_SEP_OPT,
    refine_distance: Distance = REFINE_DISTANCE_OPT,
    refine_reduce: Reduce = REFINE_REDUCE_OPT,
    lr_prototypes: float = LR_PROTOTYPES_OPT,
    lr_kept: float | None = LR_KEPT_OPT,
    lr_last: float = LR_LAST_OPT,
    last_epochs: int = LAST_EPOCHS_OPT,
    batch_size: int = BATCH_SIZE_OPT,
    push_avoid: bool = PUSH_AVOID_OPT,
    push_margin: float = PUSH_MARGIN_OPT,
    push_distinct: bool = DISTINCT_OPT,
    box_map: str = BOX_MAP_OPT,
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Revise prototypes away from the antitypes (Refine loss), then push and fine-tune the last layer."""
    params = dict(locals())

    def go():
        from protocli import distributed
        from protocli.cli.config import read_optional, revise_config
        from protocli.revise import revise_run
        from protocli.runtime import seed_everything

        from_file, _ = read_optional(config)
        cfg = revise_config(ctx, from_file, _revise_options(params))
        dist, dev = distributed.setup(device)
        if not distributed.share_cache(run, dist, dev):
            return {}
        return revise_run(run, cfg, antitypes=antitypes, out=out, device=dev, generator=seed_everything(seed))

    execute(go, as_json, quiet, kv("revision"), lock=None if out else run, wait=wait, spread=True)


@app.command()
def rounds(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run folder."),
    config: Path | None = CONFIG_OPT,
    n_rounds: int = typer.Option(5, "--rounds", help="Rounds of push -> consult the user -> revise."),
    user: User = typer.Option(User.simulated, help="simulated (needs masks) or tui (you, in the review TUI)."),
    epochs: int = typer.Option(30, help="Revision epochs per round."),
    criterion: Criterion = typer.Option(Criterion.box, help="Simulated user's non-object criterion."),
    lam_refine: float = LAM_REFINE_OPT,
    lam_con: float = LAM_CON_OPT,
    lam_l1: float = LAM_L1_OPT,
    lam_clst: float = LAM_CLST_OPT,
    lam_sep: float = LAM_SEP_OPT,
    refine_distance: Distance = REFINE_DISTANCE_OPT,
    refine_reduce: Reduce = REFINE_REDUCE_OPT,
    lr_prototypes: float = LR_PROTOTYPES_OPT,
    lr_kept: float | None = LR_KEPT_OPT,
    order: Order = ORDER_OPT,
    look_alikes: bool = LOOK_ALIKES_OPT,
    lr_last: float = LR_LAST_OPT,
    last_epochs: int = LAST_EPOCHS_OPT,
    batch_size: int = BATCH_SIZE_OPT,
    push_avoid: bool = PUSH_AVOID_OPT,
    push_margin: float = PUSH_MARGIN_OPT,
    push_distinct: bool = DISTINCT_OPT,
    box_map: str = BOX_MAP_OPT,
    finally_mask: bool = typer.Option(False, "--final-mask/--no-final-mask",
                                      help="After the rounds, mask prototypes still rejected and fine-tune."),
    final_last_epochs: int | None = typer.Option(None, help="Last-layer epochs of the final mask (default: "
                                                 "--last-epochs; the authors' code: up to 300)."),
    graphics: Graphics = typer.Option(Graphics.auto, help="Pictures in the TUI (with --user tui)."),
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Iterative prototype revision, Algorithm 1 of the paper: push, consult the user, revise; repeated."""
    params = dict(locals())

    def go():
        from protocli import distributed
        from protocli.cli.config import merged, read_optional, revise_config
        from protocli.rounds import rounds_run
        from protocli.runtime import seed_everything

        from_file, rounds_file = read_optional(config)
        cfg = revise_config(ctx, from_file, _revise_options(params))
        r = merged(ctx, rounds_file, {"n_rounds": n_rounds, "criterion": criterion.value,
                                      "finally_mask": finally_mask, "final_last_epochs": final_last_epochs},
                   keys={"n_rounds": "rounds", "finally_mask": "final_mask"})
        dist, dev = distributed.setup(device)
        if not distributed.share_cache(run, dist, dev):
            return {}
        return rounds_run(run, n_rounds=r["n_rounds"], user=user.value, epochs=cfg.epochs, criterion=r["criterion"],
                          final_mask=r["finally_mask"], final_last_epochs=r["final_last_epochs"],
                          ask=_tui(graphics.value) if user == User.tui else None, out=out, device=dev,
                          generator=seed_everything(seed), cfg=cfg, order=order.value, look_alikes=look_alikes)

    execute(go, as_json, quiet, _show_rounds, lock=None if out else run, wait=wait, spread=True)


def _show_rounds(result: dict) -> None:
    from protocli.console import print_table

    # A subset that fits an 80-column terminal; --json and RUN/rounds.json hold every column.
    cols = ["round", "non_object", "clicks", "antitypes", "accuracy_before_ft", "accuracy_after_ft",
            "overlap_ge_75"]
    rows = result.get("rounds", [])
    print_table("rounds", rows, [c for c in cols if rows and c in rows[0]])
