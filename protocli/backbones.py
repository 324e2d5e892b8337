"""Backbone name (+ ImageNet weights or a local weights file) -> (feature extractor, out_channels).

The feature extractor `f` of a ProtoPNet is a torchvision classifier without its head:

- `resnet18/34/50/101/152`: conv1, bn1, relu, maxpool, layer1..layer4 (stride 32). A suffix cuts the
  network after an earlier stage: `resnet18@layer3` has stride 16, `resnet34@layer2` stride 8. On
  small images stride 32 leaves a 3x3 grid in which every cell sees the whole picture.
- `vgg11/13/16/19` and `*_bn`: the whole `features` stack, final max-pool included (stride 32).
- `densenet121/161/169/201`: `features` (which ends in norm5) and a ReLU (stride 32).
- `tiny`: six conv3x3-BN-ReLU blocks (16-32-64-128-128-128 channels, strides 2-2-2-1-1-1, the last
  two dilated 2 and 4: stride 8, receptive field 127 px) for CPU demos and tests; 96 px -> 12x12 grid.

Parameter names are those of the torchvision model (`layer1.0.conv1.weight`, `features.0.weight`),
so a state dict of the full torchvision model fits once its head (and any cut stages) is dropped.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

from protocli.errors import BadInput

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VGGS = tuple(f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn"))
DENSENETS = ("densenet121", "densenet161", "densenet169", "densenet201")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
TINY = "tiny"


def list_backbones(cuts: bool = False) -> list[str]:
    """Accepted backbone names; with `cuts`, also every `resnetN@layerK`."""
    names = [TINY, *RESNETS, *VGGS, *DENSENETS]
    if cuts:
        names += [f"{r}@{s}" for r in RESNETS for s in RESNET_STAGES[:-1]]
    return names


def build_backbone(
    name: str, pretrained: bool = False, weights: str | Path | None = None
) -> tuple[nn.Module, int]:
    """Build backbone `name` -> (module, out_channels).

    `pretrained`: torchvision's IMAGENET1K_V1 weights (the ones the original ProtoPNet used), taken
    from the torch cache or downloaded into it. `weights`: a local state dict (.safetensors, or a
    torch.save file read with weights_only=True) of the full torchvision model or of the backbone; it
    takes precedence over `pretrained`, so nothing is downloaded when a file is given.
    """
    base, _, cut = name.partition("@")
    if cut and (base not in RESNETS or cut not in RESNET_STAGES):
        raise BadInput(
            f"backbone {name!r}: a cut '@layerK' (K = 1..4) is only supported on {', '.join(RESNETS)}"
        )
    if base == TINY:
        if pretrained and weights is None:
            raise BadInput(
                "backbone 'tiny' has no ImageNet weights; drop --pretrained or give --weights FILE"
            )
        module = _tiny()
        full_keys = set(module.state_dict())
    elif base in RESNETS or base in VGGS or base in DENSENETS:
        full = _torchvision(base, pretrained and weights is None)
        full_keys = set(full.state_dict())
        module = _strip_head(base, full, cut or "layer4")
    else:
        raise BadInput(
            f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())} or resnetN@layerK"
        )
    if weights is not None:
        load_backbone_weights(module, full_keys, Path(weights), name)
    return module, out_channels(module)


def out_channels(module: nn.Module) -> int:
    """Channels of the last conv or batch-norm layer, which is what the backbone outputs.

    Holds for every backbone here: a ResNet stage ends with a block whose last registered norm is
    bn2/bn3 (only a stage's first block has a `downsample`), VGG ends in conv (+BN) then pool, and
    DenseNet ends in norm5.
    """
    last = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            last = m.out_channels
        elif isinstance(m, nn.BatchNorm2d):
            last = m.num_features
    if last is None:
        raise ValueError("backbone has no Conv2d or BatchNorm2d layer")
    return last


def _tiny() -> nn.Sequential:
    # Widths are small on purpose: at 96 px the 48x48 first stage dominates the cost (memory-bound
    # BN/ReLU), so 16 channels there keeps a batch of 64 at several hundred images/s on 2 cores.
    # The two dilated blocks widen the receptive field from 31 px (less than a bird at 96 px) to
    # 127 px at the same 12x12 grid. With 31 px a cell saw one part, and on the synthetic data only
    # the background is class-specific within one part-sized window (a class is a combination of
    # parts), so a from-scratch model learned the background alone (test accuracy below chance at
    # confound 0.9; measured, see README "Deviations"). ResNet34 at 224 px also sees beyond the image.
    def block(cin: int, cout: int, stride: int, dilation: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    module = nn.Sequential(
        OrderedDict(
            block1=block(3, 16, 2), block2=block(16, 32, 2), block3=block(32, 64, 2), block4=block(64, 128, 1),
            block5=block(128, 128, 1, dilation=2), block6=block(128, 128, 1, dilation=4),
        )
    )
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return module


def _torchvision(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    if not pretrained and name in VGGS:
        return _vgg_without_classifier_init(name)
    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    enum = torchvision.models.get_model_weights(name)
    try:
        return torchvision.models.get_model(name, weights=enum.IMAGENET1K_V1)
    except (URLError, OSError, RuntimeError) as e:
        # OSError covers socket/DNS failures, RuntimeError a corrupt or truncated cached file.
        reason = " ".join(str(e).split())[:160]
        raise BadInput(
            f"--pretrained: cannot get ImageNet weights for {name} (offline and not in the torch cache? {reason}); "
            f"give a local state dict with --weights FILE"
        ) from e


def _vgg_without_classifier_init(name: str) -> nn.Module:
    # VGG's classifier holds ~120M parameters whose random init takes seconds and half a GB only to be
    # thrown away: build the model on the meta device (shapes only), then materialise the features
    # alone with torchvision's VGG init (conv: kaiming normal, fan_out; BN: 1 and 0).
    import torchvision

    with torch.device("meta"):
        full = torchvision.models.get_model(name, weights=None)
    full.features.to_empty(device="cpu")
    for m in full.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    return full


def _strip_head(base: str, full: nn.Module, last_stage: str) -> nn.Module:
    # Keep torchvision's attribute names so state-dict keys stay those of the full model.
    if base in RESNETS:
        parts = ["conv1", "bn1", "relu", "maxpool", *RESNET_STAGES[: RESNET_STAGES.index(last_stage) + 1]]
        return nn.Sequential(OrderedDict((p, getattr(full, p)) for p in parts))
    if base in VGGS:
        return nn.Sequential(OrderedDict(features=full.features))
    # DenseNet's features end in norm5; torchvision applies the ReLU in forward(), so add it here.
    return nn.Sequential(OrderedDict(features=full.features, relu=nn.ReLU(inplace=True)))


# Old DenseNet checkpoints (including torchvision's own ImageNet files) name the layers inside a dense
# layer "norm.1" instead of "norm1"; torchvision renames them on load, and so must we.
_DENSE_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var)$"
)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file -> flat {name: tensor}; never unpickles arbitrary objects."""
    if not path.is_file():
        raise BadInput("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure is the file's fault
        raise BadInput(
            f"cannot read weights ({type(e).__name__}: {' '.join(str(e).split())[:160]})", path
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common checkpoint wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput("not a state dict of tensors", path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from DataParallel
    return {_DENSE_OLD_KEY.sub(r"\1\2.\3", k): v for k, v in state.items()}


def load_backbone_weights(module: nn.Module, full_keys: set[str], path: Path, name: str) -> None:
    """Load `path` into `module` strictly; keys of the head or of cut stages (in `full_keys` but not
    in the backbone) are dropped. BadInput names the file and the first bad key."""
    state = read_state_dict(path)
    own = module.state_dict()
    first = next(iter(own))
    if first not in state and f"features.{first}" in state:
        # A ProtoPNet state dict (ours): the backbone lives under "features.".
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    state = {k: v for k, v in state.items() if k in own or k not in full_keys}
    # Checkpoints written before BatchNorm counted batches lack num_batches_tracked; BN fills it in.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise BadInput(
            f"does not fit backbone {name}: missing key {missing[0]!r} ({len(missing)} missing)", path
        )
    if unexpected:
        raise BadInput(
            f"does not fit backbone {name}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)",
            path,
        )
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise BadInput(
                f"does not fit backbone {name}: {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}",
                path,
            )
    module.load_state_dict(state, strict=False)
