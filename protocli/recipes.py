"""Training recipes: a recipe name + the options a user gave -> a complete `TrainConfig`.

Torch-free, so that `protocli train --help` can show each recipe's defaults without importing torch.

- `paper`: the original ProtoPNet baseline (ResNet34 from ImageNet weights, 224 px, D = 128, batch
  80, warm 5 / joint 20 / last 100 epochs, the original learning rates, weight decay, step decay
  every 5 epochs, cluster 0.8, separation 0.08). These are the `TrainConfig` field defaults.
- `tiny`: the `tiny` backbone trained from scratch on CPU (the synthetic data, tests, the demo):
  96 px, D = 32, batch 32, warm 1 / joint 12 / last 20 epochs, learning rates 2-3x higher and no
  step decay, no cluster or separation cost. Why each differs is measured (README "Deviations"):
  from scratch, the cluster and separation costs pull the prototypes onto the mean latent before
  the encoder has learned anything, and train accuracy stays near chance.
- `finetune`: the `tiny` sizes (96 px, D = 32, batch 32, warm 1 / joint 12 / last 20 epochs) with the
  paper's learning rates, step decay and cluster and separation costs: the paper's regime (a
  pretrained encoder fine-tuned on the confounded set) at CPU scale, for `tiny` with `--weights`
  (an encoder from `protocli pretrain`). The high `tiny` learning rates would wash the pretraining
  out (measured in docs/paper-regime.md).
- `auto` (the CLI default): for the tiny backbone `finetune` when weights are given, else `tiny`;
  `paper` for every other backbone.

Options a user gives always win over the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from protocli.errors import BadInput


@dataclass
class TrainConfig:
    backbone: str = "resnet34"
    pretrained: bool = False
    weights: str | None = None
    img_size: int = 224
    prototypes_per_class: int = 10
    proto_dim: int = 128
    add_on: str = "shallow"
    warm_epochs: int = 5
    joint_epochs: int = 20
    last_epochs: int = 100
    batch_size: int = 80
    lr_features: float = 1e-4
    lr_add_on: float = 3e-3
    lr_prototypes: float = 3e-3
    lr_last: float = 1e-4
    weight_decay: float = 1e-3
    lr_step: int = 5
    clst: float = 0.8
    sep: float = 0.08
    l1: float = 1e-4
    crop: bool = True
    augment: bool = True
    stop_after: str = "last"  # joint | push | last
    amp: bool = True
    channels_last: bool = True
    workers: int | None = None
    seed: int = 0
    sync_bn: bool = False  # several CUDA processes: BatchNorm statistics over the global batch
    recipe: str = "paper"  # recorded in the run's manifest; the fields above are what counts

    def coefs(self) -> dict:
        return {"crs_ent": 1.0, "clst": self.clst, "sep": -self.sep, "l1": self.l1}


PAPER: dict = {f.name: f.default for f in fields(TrainConfig) if f.name != "recipe"}
TINY: dict = {**PAPER, "img_size": 96, "proto_dim": 32, "warm_epochs": 1, "joint_epochs": 12, "last_epochs": 20,
              "batch_size": 32, "lr_features": 5e-3, "lr_add_on": 1e-2, "lr_prototypes": 1e-2, "lr_step": 100,
              "clst": 0.0, "sep": 0.0}
FINETUNE: dict = {**TINY, **{k: PAPER[k] for k in ("lr_features", "lr_add_on", "lr_prototypes", "lr_step",
                                                    "clst", "sep")}}
RECIPES = {"paper": PAPER, "tiny": TINY, "finetune": FINETUNE}
# The fields whose default depends on the recipe (the CLI leaves them unset unless given).
VARYING = tuple(k for k in PAPER if PAPER[k] != TINY[k])


def resolve(recipe: str, backbone: str, pretrained: bool = False) -> str:
    """`auto` -> for the tiny backbone `finetune` when it starts from weights, else `tiny`; `paper` for
    every other backbone. A named recipe stays as it is."""
    if recipe == "auto":
        if backbone != "tiny":
            return "paper"
        return "finetune" if pretrained else "tiny"
    if recipe not in RECIPES:
        raise BadInput(f"--recipe {recipe!r}: expected auto, {', '.join(RECIPES)}")
    return recipe


def make_config(recipe: str = "auto", **given) -> TrainConfig:
    """The recipe's values, overridden by every option in `given` that is not None."""
    chosen = {k: v for k, v in given.items() if v is not None}
    name = resolve(recipe, chosen.get("backbone", PAPER["backbone"]),
                   pretrained=bool(chosen.get("weights") or chosen.get("pretrained")))
    return TrainConfig(**{**RECIPES[name], **chosen, "recipe": name})


def default_help(field: str) -> str:
    """'[paper: X, tiny: Y]' for a recipe-dependent field, for its --help line."""
    return f"[paper: {PAPER[field]:g}, tiny: {TINY[field]:g}]"
