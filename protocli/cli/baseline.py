"""`protocli data synth|check`, `train`, `push`, `prune`, `evaluate`: the dataset and the baseline ProtoPNet."""

from __future__ import annotations

from pathlib import Path

import typer

from protocli.cli.common import (
    DEVICE_OPT,
    JSON_OPT,
    OUT_RUN_OPT,
    QUIET_OPT,
    SEED_OPT,
    WAIT_OPT,
    Criterion,
    execute,
    kv,
    renamed,
    say_error,
)
from protocli.recipes import default_help as R

app = typer.Typer(rich_markup_mode=None)
data_app = typer.Typer(help="Make and check datasets in the CUB-200-2011 layout.", no_args_is_help=True,
                       rich_markup_mode=None)


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
    family: str = typer.Option("birds", help="What the images show: birds (the demo's data) or flowers "
                               "(other objects, backgrounds and sizes, kept for confirming defaults)."),
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Write a synthetic, confounded bird (or flower) dataset in the CUB-200-2011 layout (with masks)."""

    def go():
        from protocli.data.synth import synth

        return synth(out, classes=classes, train_per_class=train_per_class, test_per_class=test_per_class,
                     size=size, confound=confound, seed=seed, family=family)

    execute(go, as_json, quiet, kv("synthetic dataset"))


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

    execute(go, as_json, quiet, kv("dataset"))


# ----------------------------------------------------------------------------------- pretrain
@app.command()
def pretrain(
    data: Path = typer.Argument(..., help="Dataset root (CUB layout) whose backgrounds carry no class information."),
    weights_file: Path = typer.Argument(..., help="Weights file to write (.safetensors), for train --weights."),
    backbone: str = typer.Option("tiny", help="Backbone to pretrain (the names train --backbone takes)."),
    img_size: int = typer.Option(96, help="Input side in pixels."),
    epochs: int = typer.Option(16, help="Training epochs (one-cycle learning-rate schedule)."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(5e-3, help="Peak learning rate (AdamW; one-cycle schedule)."),
    crop: bool = typer.Option(True, "--crop/--no-crop", help="Crop images to their bounding boxes."),
    device: str = DEVICE_OPT,
    workers: int | None = typer.Option(None, help="DataLoader workers (default: from the CPU count)."),
    seed: int = SEED_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Pretrain an encoder as a plain classifier and save it for `train --weights FILE`.

    The offline stand-in for ImageNet weights: train on objects over uninformative backgrounds
    (e.g. `protocli data synth PRE --confound 0.125 --seed 1000`), then fine-tune a ProtoPNet on
    the confounded set with `protocli train DATA RUN --backbone tiny --weights FILE`.
    """

    def go():
        from protocli.pretrain import pretrain as run_pretrain
        from protocli.runtime import pick_device, seed_everything

        return run_pretrain(data, weights_file, backbone=backbone, img_size=img_size, epochs=epochs,
                            batch_size=batch_size, lr=lr, crop=crop, device=pick_device(device),
                            generator=seed_everything(seed), workers=workers)

    execute(go, as_json, quiet, kv("pretrained encoder"))


# -------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Path = typer.Argument(..., help="Dataset root in the CUB-200-2011 layout."),
    run: Path | None = typer.Argument(None, show_default=False,
                                      help="Run folder to create (or continue with --resume)."),
    old_run: Path | None = typer.Option(None, "--run", hidden=True, help="Old spelling of RUN."),
    old_run_dir: Path | None = typer.Option(None, "--run-dir", hidden=True, help="Old spelling of RUN (torchrun)."),
    backbone: str = typer.Option("resnet34", help="resnet18..152, vgg11..19[_bn], densenet121..201, tiny; "
                                 "a ResNet cut early as e.g. resnet18@layer3."),
    pretrained: bool = typer.Option(False, help="Start the backbone from torchvision's ImageNet weights."),
    weights: Path | None = typer.Option(None, help="Backbone weights from a local file (.safetensors or .pth)."),
    recipe: str = typer.Option("auto", help="Defaults for the options marked [paper: .., tiny: ..]: paper (the "
                               "original ProtoPNet baseline), tiny (from scratch on CPU), finetune (tiny's sizes with "
                               "paper's learning rates and costs, for a pretrained tiny encoder), auto (tiny backbone: "
                               "finetune with --weights, else tiny; other backbones: paper). Options you give win."),
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
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun on CUDA: BatchNorm statistics over "
                                 "the global batch (default: each process's own, as DataParallel)."),
    seed: int = SEED_OPT,
    resume: bool = typer.Option(False, help="Continue an interrupted training of RUN from its checkpoint."),
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Train the baseline ProtoPNet: warm -> joint -> push -> last layer.

    Several GPUs: torchrun --nproc-per-node N -m protocli train DATA RUN ... (--batch-size is the global
    batch)."""
    how = "give the run folder as the second argument: protocli train DATA RUN"
    run = renamed(run, old_run_dir, "RUN", "--run-dir", quiet, how)
    run = renamed(run, old_run, "RUN", "--run", quiet, how)
    if run is None:
        say_error("train needs a run folder to create: protocli train DATA RUN")

    def go():
        from protocli import distributed
        from protocli.recipes import make_config
        from protocli.train import train_run

        cfg = make_config(
            recipe, backbone=backbone, pretrained=pretrained, weights=str(weights) if weights else None,
            img_size=img_size, prototypes_per_class=prototypes_per_class, proto_dim=proto_dim, add_on=add_on,
            warm_epochs=warm_epochs, joint_epochs=joint_epochs, last_epochs=last_epochs, batch_size=batch_size,
            lr_features=lr_features, lr_add_on=lr_add_on, lr_prototypes=lr_prototypes, lr_last=lr_last,
            weight_decay=weight_decay, lr_step=lr_step, clst=clst, sep=sep, l1=l1, crop=crop, augment=augment,
            stop_after=stop_after, amp=amp, channels_last=channels_last, workers=workers, seed=seed, sync_bn=sync_bn,
        )
        dist, dev = distributed.setup(device)
        return train_run(data, run, cfg, device=dev, resume=resume, dist=dist)

    execute(go, as_json, quiet, kv("training"), lock=run, wait=wait, new_run=True, spread=True)


@app.command()
def push(
    run: Path = typer.Argument(..., help="Run folder."),
    box_map: str = typer.Option("before", "--box-map", metavar="before|after",
                                help="Map behind each prototype's 95th-percentile box and heatmap: 'before' = "
                                     "the prototype vector before projection (the original ProtoPNet), 'after' = "
                                     "the projected vector (always peaks at the pushed cell)."),
    device: str = DEVICE_OPT,
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """Project every prototype onto its nearest own-class training patch; write its pictures."""

    def go():
        from protocli import distributed
        from protocli.push import push_run

        dist, dev = distributed.setup(device)
        return push_run(run, device=dev, dist=dist, box_map=box_map)

    execute(go, as_json, quiet, kv("push"), lock=run, wait=wait, spread=True)


@app.command()
def prune(
    run: Path = typer.Argument(..., help="Run folder (after a push)."),
    k: int = typer.Option(6, "--k", help="Nearest training patches looked at per prototype (one per image, "
                          "any class; the original ProtoPNet: 6)."),
    threshold: int = typer.Option(3, help="Prune when fewer of the k come from the prototype's class "
                                  "(the original: 3)."),
    last_epochs: int = typer.Option(100, help="Last-layer epochs after pruning (the original: 100)."),
    lr_last: float = typer.Option(1e-4, help="Learning rate of the last layer."),
    out: Path | None = OUT_RUN_OPT,
    device: str = DEVICE_OPT,
    seed: int = SEED_OPT,
    wait: bool = WAIT_OPT,
    as_json: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
):
    """ProtoPNet's pruning: mask prototypes whose nearest training patches are mostly of other classes.

    Pruned prototypes are masked (prototype_mask 0, a "prune" stage), not deleted: the logits are the
    same and prototype indices stay valid. Then the last layer is retrained on the cache."""

    def go():
        from protocli.prune import prune_run
        from protocli.runtime import pick_device, seed_everything

        return prune_run(run, k=k, threshold=threshold, last_epochs=last_epochs, lr_last=lr_last, out=out,
                         device=pick_device(device), generator=seed_everything(seed))

    execute(go, as_json, quiet, kv("pruning"), lock=None if out else run, wait=wait)


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
        from protocli import distributed
        from protocli.evaluate import evaluate_run

        dist, dev = distributed.setup(device)
        return evaluate_run(run, criterion=criterion.value, device=dev, dist=dist)

    execute(go, as_json, quiet, kv("evaluation"), spread=True)
