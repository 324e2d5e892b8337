"""The `protocli` command line: thin Typer commands over the stage functions.

Each command parses its options, picks device and seed at the edge, calls one stage function
that returns a plain dict, prints a summary table on stderr and, with `--json`, the dict on
stdout. Exit codes: 0 success, 2 bad input (one line naming the file, field or value), 1 other
failures, 130 interrupted. Heavy imports (torch, torchvision, textual) happen inside commands so
that `protocli --help` and `protocli data check` start fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from protocli.recipes import default_help as R

app = typer.Typer(
    help="Train prototypical-part networks (ProtoPNet), review their prototypes in the terminal, "
    "and revise them so the model decides by the object (Gerstenberger et al.).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich-formatted help imports markdown/pygments and costs ~0.25 s per call,
    # which adds up when rounds are scripted in shell loops.
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Make and check datasets in the CUB-200-2011 layout.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")

JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON on stdout (tables go to stderr).")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress bars or tables on stderr.")
DEVICE_OPT = typer.Option("auto", "--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
OUT_RUN_OPT = typer.Option(None, "--out", help="Fork the run into this new folder first and change the fork.")
LR_PROTOTYPES_OPT = typer.Option(3e-2, help="Learning rate of the prototypes (authors' code: 1e-3).")
LR_KEPT_OPT = typer.Option(None, help="Learning rate of the prototypes that do not sit on an antitype "
                           "(default: --lr-prototypes); see docs/revision.md for the trade-off.")
ANTITYPES_OPT = typer.Option(
    None, "--antitypes", help="Decisions file to use (default: RUN/antitypes.json).", exists=False
)


class Criterion(str, Enum):
    box = "box"
    cell = "cell"


class Graphics(str, Enum):
    auto = "auto"
    kitty = "kitty"
    sixel = "sixel"
    halfcell = "halfcell"
    none = "none"


class User(str, Enum):
    simulated = "simulated"
    tui = "tui"


class Distance(str, Enum):
    l2 = "l2"
    squared = "squared"


class Reduce(str, Enum):
    max = "max"
    mean = "mean"


def _execute(fn: Callable[[], dict], as_json: bool, quiet: bool, show: Callable[[dict], Any] | None = None):
    """Run a stage and map its outcome to output and exit codes."""
    from protocli.console import QUIET, console
    from protocli.errors import BadInput

    QUIET["on"] = quiet
    try:
        result = fn()
    except BadInput as e:
        console.print(f"[red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the run is unchanged (training keeps its checkpoint for --resume)")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:  # anything else is our failure: exit 1, traceback on request
        if os.environ.get("PROTOCLI_DEBUG"):
            raise
        console.print(f"[red]failed:[/] {type(e).__name__}: {e} (set PROTOCLI_DEBUG=1 for the traceback)",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if show is not None and not quiet:
        show(result)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _kv(title: str):
    def show(result: dict):
        from protocli.console import print_kv

        print_kv(title, result)

    return show


# --------------------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset into (must be new or empty)."),
    classes: int = typer.Option(8, help="Number of classes (each a combination of part attributes)."),
    train_per_class: int = typer.Option(40, help="Training images per class."),
    test_per_class: int = typer.Option(20, help="Test images per class."),
    size: int = typer.Option(96, help="Image side in pixels."),
    confound: float = typer.Option(
        0.8, help="Probability that a training image shows its class's own background (test: random)."
    ),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Write a synthetic, confounded bird dataset in the CUB-200-2011 layout (with masks)."""

    def go():
        from protocli.data.synth import synth

        return synth(out, classes=classes, train_per_class=train_per_class, test_per_class=test_per_class,
                     size=size, confound=confound, seed=seed)

    _execute(go, as_json, quiet, _kv("synthetic dataset"))


@data_app.command("check")
def data_check(
    data: Path = typer.Argument(..., help="Dataset root (holds images.txt, classes.txt, images/ ...)."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Check a dataset: every file decodes, ids agree across files, labels and masks are sound."""

    def go():
        from protocli.data.check import check

        return check(data)

    _execute(go, as_json, quiet, _kv("dataset"))


# -------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Path = typer.Argument(..., help="Dataset root in the CUB-200-2011 layout."),
    run: Path = typer.Option(..., "--run", help="Run folder to create (or continue with --resume)."),
    backbone: str = typer.Option("resnet34", help="resnet18..152, vgg11..19[_bn], densenet121..201, tiny; "
                                 "a ResNet cut early as e.g. resnet18@layer3."),
    pretrained: bool = typer.Option(False, help="Start the backbone from torchvision's ImageNet weights."),
    weights: Path | None = typer.Option(None, help="Backbone weights from a local file (.safetensors or .pth)."),
    recipe: str = typer.Option("auto", help="Defaults for the options marked [paper: .., tiny: ..]: paper (the "
                               "original ProtoPNet baseline), tiny (from scratch on CPU), auto (tiny for the tiny "
                               "backbone, else paper). Options you give win."),
    img_size: int | None = typer.Option(None, help=f"Input side in pixels (images are resized to a square). {R('img_size')}"),
    prototypes_per_class: int = typer.Option(10, help="Prototypes per class."),
    proto_dim: int | None = typer.Option(None, help=f"Latent and prototype dimension D. {R('proto_dim')}"),
    add_on: str = typer.Option("shallow", help="Add-on head: shallow or bottleneck."),
    warm_epochs: int | None = typer.Option(
        None, help=f"Epochs with the backbone frozen (add-on and prototypes). {R('warm_epochs')}"),
    joint_epochs: int | None = typer.Option(
        None, help=f"Epochs training backbone, add-on and prototypes. {R('joint_epochs')}"),
    last_epochs: int | None = typer.Option(
        None, help=f"Last-layer epochs after the push (on cached latents). {R('last_epochs')}"),
    batch_size: int | None = typer.Option(None, help=f"Training batch size. {R('batch_size')}"),
    lr_features: float | None = typer.Option(None, help=f"Joint learning rate of the backbone. {R('lr_features')}"),
    lr_add_on: float | None = typer.Option(None, help=f"Learning rate of the add-on layers. {R('lr_add_on')}"),
    lr_prototypes: float | None = typer.Option(None, help=f"Learning rate of the prototypes. {R('lr_prototypes')}"),
    lr_last: float = typer.Option(1e-4, help="Learning rate of the last layer."),
    weight_decay: float = typer.Option(1e-3, help="Weight decay of backbone and add-on."),
    lr_step: int | None = typer.Option(
        None, help=f"Joint learning rates decay x0.1 every this many epochs. {R('lr_step')}"),
    clst: float | None = typer.Option(None, help=f"Cluster cost coefficient. {R('clst')}"),
    sep: float | None = typer.Option(None, help=f"Separation cost coefficient (subtracted). {R('sep')}"),
    l1: float = typer.Option(1e-4, help="L1 coefficient on wrong-class last-layer weights."),
    crop: bool = typer.Option(True, "--crop/--no-crop", help="Crop images to their bounding boxes."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Rotation/skew/shear/flip augmentation."),
    stop_after: str = typer.Option("last", help="Stop after this phase: joint, push or last."),
    device: str = DEVICE_OPT,
    amp: bool = typer.Option(True, "--amp/--no-amp", help="CUDA only: autocast (bf16 where supported)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="CUDA only: NHWC memory."),
    workers: int | None = typer.Option(None, help="DataLoader workers (default: from the CPU count)."),
    seed: int = typer.Option(0, help="Random seed."),
    resume: bool = typer.Option(False, help="Continue an interrupted training of --run from its checkpoint."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Train the baseline ProtoPNet: warm -> joint -> push -> last layer."""

    def go():
        from protocli.recipes import make_config
        from protocli.runtime import pick_device
        from protocli.train import train_run

        cfg = make_config(
            recipe, backbone=backbone, pretrained=pretrained, weights=str(weights) if weights else None,
            img_size=img_size, prototypes_per_class=prototypes_per_class, proto_dim=proto_dim, add_on=add_on,
            warm_epochs=warm_epochs, joint_epochs=joint_epochs, last_epochs=last_epochs, batch_size=batch_size,
            lr_features=lr_features, lr_add_on=lr_add_on, lr_prototypes=lr_prototypes, lr_last=lr_last,
            weight_decay=weight_decay, lr_step=lr_step, clst=clst, sep=sep, l1=l1, crop=crop, augment=augment,
            stop_after=stop_after, amp=amp, channels_last=channels_last, workers=workers, seed=seed,
        )
        return train_run(data, run, cfg, device=pick_device(device), resume=resume)

    _execute(go, as_json, quiet, _kv("training"))


@app.command()
def push(
    run: Path = typer.Argument(..., help="Run folder."),
    device: str = DEVICE_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Project every prototype onto its nearest own-class training patch; write its pictures."""

    def go():
        from protocli.push import push_run
        from protocli.runtime import pick_device

        return push_run(run, device=pick_device(device))

    _execute(go, as_json, quiet, _kv("push"))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run folder."),
    criterion: Criterion = typer.Option(Criterion.box, help="Non-object criterion reported as `non_object`."),
    device: str = DEVICE_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Accuracy, prototype counts and (with masks) object overlap of the prototypes. Changes nothing."""

    def go():
        from protocli.evaluate import evaluate_run
        from protocli.runtime import pick_device

        return evaluate_run(run, criterion=criterion.value, device=pick_device(device))

    _execute(go, as_json, quiet, _kv("evaluation"))


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

    _execute(go, as_json, quiet, _kv("simulated review"))


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

    _execute(go, as_json, False, _kv("review"))


@app.command()
def mask(
    run: Path = typer.Argument(..., help="Run folder."),
    antitypes: Path | None = ANTITYPES_OPT,
    last_epochs: int = typer.Option(20, help="Last-layer epochs after masking (on cached latents)."),
    lr_last: float = typer.Option(1e-4, help="Learning rate of the last layer."),
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = typer.Option(0, help="Random seed."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Masking condition: rejected prototypes stop voting, then the last layer is retrained."""

    def go():
        from protocli.mask import mask_run
        from protocli.runtime import pick_device, seed_everything

        return mask_run(run, antitypes=antitypes, last_epochs=last_epochs, lr_last=lr_last, out=out,
                        device=pick_device(device), generator=seed_everything(seed))

    _execute(go, as_json, quiet, _kv("masking"))


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
    seed: int = typer.Option(0, help="Random seed."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Revise prototypes away from the antitypes (Refine loss), then push and fine-tune the last layer."""

    def go():
        from protocli.revise import ReviseConfig, revise_run
        from protocli.runtime import pick_device, seed_everything

        cfg = ReviseConfig(epochs=epochs, lam_refine=lam_refine, lam_con=lam_con, lam_l1=lam_l1,
                           lam_clst=lam_clst, lam_sep=lam_sep, refine_distance=refine_distance.value,
                           refine_reduce=refine_reduce.value, lr_prototypes=lr_prototypes, lr_kept=lr_kept,
                           lr_last=lr_last,
                           last_epochs=last_epochs, batch_size=batch_size)
        return revise_run(run, cfg, antitypes=antitypes, out=out, device=pick_device(device),
                          generator=seed_everything(seed))

    _execute(go, as_json, quiet, _kv("revision"))


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
    seed: int = typer.Option(0, help="Random seed."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Iterative prototype revision (Alg. 1): push, consult the user, revise; repeated."""

    def go():
        from protocli.revise import ReviseConfig
        from protocli.rounds import rounds_run
        from protocli.runtime import pick_device, seed_everything

        cfg = ReviseConfig(lr_prototypes=lr_prototypes, lr_kept=lr_kept)
        return rounds_run(run, n_rounds=n_rounds, user=user.value, epochs=epochs, criterion=criterion.value,
                          final_mask=finally_mask, graphics=graphics.value, out=out,
                          device=pick_device(device), generator=seed_everything(seed), cfg=cfg)

    def show(result):
        from protocli.console import print_table

        # A subset that fits an 80-column terminal; --json and RUN/rounds.json hold every column.
        cols = ["round", "non_object", "clicks", "antitypes", "accuracy_before_ft", "accuracy_after_ft",
                "overlap_ge_75"]
        rows = result.get("rounds", [])
        print_table("rounds", rows, [c for c in cols if rows and c in rows[0]])

    _execute(go, as_json, quiet, show)


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the figures (default: RUN/report)."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Write PNG figures after the paper's and a short report.md."""

    def go():
        from protocli.report import report_run

        return report_run(run, out=out)

    _execute(go, as_json, quiet, _kv("report"))


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run folder."),
    image: Path = typer.Argument(..., help="Image file to explain (used as is: no bounding-box crop)."),
    top: int = typer.Option(5, "--top", help="How many prototypes to show."),
    out: Path | None = typer.Option(None, "--out", help="PNG to write (default: RUN/explain/<image stem>.png)."),
    device: str = DEVICE_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """This looks like that: the prototypes that drove the prediction for one image."""

    def go():
        from protocli.explain import explain_image
        from protocli.runtime import pick_device

        return explain_image(run, image, top=top, out=out, device=pick_device(device))

    _execute(go, as_json, quiet, None)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the data and the runs."),
    device: str = DEVICE_OPT,
    seed: int = typer.Option(0, help="Random seed."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """The whole job on built-in synthetic data: baseline, masking and 5 revision rounds, compared."""

    def go():
        from protocli.demo import demo_run
        from protocli.runtime import pick_device

        return demo_run(out, device=pick_device(device), seed=seed)

    _execute(go, as_json, quiet, None)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
