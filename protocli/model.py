"""ModelConfig -> ProtoPNet: images in [0, 1] (B, 3, S, S) -> (logits (B, K), min distances (B, P)).

The network (Chen et al. 2019): backbone `f`, add-on `g` (1x1 convs ending in a Sigmoid, so latents
lie in [0, 1]^D), P prototypes in R^D, squared L2 distances between every latent cell and every
prototype, log similarity of each prototype's min distance over the grid, and a bias-free last
layer. Prototype j belongs to class j // prototypes_per_class. `prototype_mask` (P,) multiplies the
similarities before the last layer: a masked prototype no longer votes (Gerstenberger et al.).

Precision: distances are always computed in float32 (float64 if the inputs are float64), also
under torch.autocast. They are a difference of large terms, |z|^2 - 2 z.p + |p|^2 with |z|^2 up to
D = 128, and log((d+1)/(d+1e-4)) is steepest near d = 0: bf16 (8 significant bits) spaces its values
0.5 apart near 100, so rounding |z|^2 alone wipes out exactly the small distances that matter.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from protocli.errors import BadInput

EPS = 1e-4  # similarity epsilon of the original: sim(0) = log(1/EPS) ~ 9.21
ADD_ONS = ("shallow", "bottleneck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    backbone: str = "resnet34"
    num_classes: int = 200
    prototypes_per_class: int = 10
    proto_dim: int = 128
    add_on: str = "shallow"  # "shallow" | "bottleneck"
    img_size: int = 224

    def __post_init__(self) -> None:
        for f in ("num_classes", "prototypes_per_class", "proto_dim", "img_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadInput(f"model config: {f} must be a positive integer, got {v!r}")
        if self.add_on not in ADD_ONS:
            raise BadInput(f"model config: add_on must be one of {', '.join(ADD_ONS)}, got {self.add_on!r}")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise BadInput(f"model config: backbone must be a name, got {self.backbone!r}")

    @property
    def num_prototypes(self) -> int:
        return self.num_classes * self.prototypes_per_class

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, dict):
            raise BadInput(f"model config: expected an object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise BadInput(f"model config: unknown field {extra[0]!r}")
        return cls(**d)


def log_similarity(d: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """log((d + 1) / (d + eps)): eps-bounded, monotonically decreasing in d >= 0, log(1/eps) at 0."""
    return torch.log((d + 1) / (d + eps))


def make_add_on(in_channels: int, dim: int, kind: str = "shallow") -> nn.Sequential:
    """1x1-conv head C -> D ending in a Sigmoid.

    "shallow": conv(C->D), ReLU, conv(D->D), Sigmoid (the original's settings and Gerstenberger's).
    "bottleneck": blocks conv(c->o), ReLU, conv(o->o), ReLU with o = max(D, c // 2), halving c until
    it reaches D; the last block ends in a Sigmoid instead (e.g. 512 -> 256 -> 128, 2 blocks).
    """
    layers: list[nn.Module] = []
    if kind == "shallow":
        layers = [nn.Conv2d(in_channels, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid()]
    elif kind == "bottleneck":
        c = in_channels
        while c > dim or not layers:
            o = max(dim, c // 2)
            layers += [nn.Conv2d(c, o, 1), nn.ReLU(), nn.Conv2d(o, o, 1)]
            layers.append(nn.ReLU() if o > dim else nn.Sigmoid())
            c = o
    else:
        raise BadInput(f"unknown add-on {kind!r}; choose one of {', '.join(ADD_ONS)}")
    head = nn.Sequential(*layers)
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return head


class ProtoPNet(nn.Module):
    """f (backbone) -> g (add-on) -> distances to prototypes -> min over grid -> log sim -> logits."""

    def __init__(self, cfg: ModelConfig, features: nn.Module | None = None, channels: int | None = None):
        super().__init__()
        if features is None:
            from protocli.backbones import build_backbone

            features, channels = build_backbone(cfg.backbone)
        elif channels is None:
            from protocli.backbones import out_channels

            channels = out_channels(features)
        self.cfg = cfg
        self.num_classes = K = cfg.num_classes
        self.num_prototypes = P = cfg.num_prototypes
        self.features = features
        self.add_on = make_add_on(channels, cfg.proto_dim, cfg.add_on)
        self.prototypes = nn.Parameter(torch.rand(P, cfg.proto_dim))
        identity = F.one_hot(torch.arange(P) // cfg.prototypes_per_class, K).float()
        self.last_layer = nn.Linear(P, K, bias=False)
        with torch.no_grad():
            # +1 to the prototype's own class, -0.5 to every other class.
            self.last_layer.weight.copy_(1.5 * identity.T - 0.5)
        # Every buffer is its own tensor (no views or shared storage), so the state dict can be
        # written by safetensors as is.
        self.register_buffer("class_identity", identity)
        self.register_buffer("prototype_mask", torch.ones(P))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self._grid: tuple[int, tuple[int, int]] | None = None  # (img_size, grid), filled by grid_size()

    @property
    def prototype_class(self) -> torch.Tensor:
        """(P,) long: the class of each prototype."""
        return self.class_identity.argmax(dim=1)

    # -- forward pieces ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, S, S) -> latents z (B, D, H, W) in [0, 1]."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.add_on(self.features(x))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, H, W) -> squared L2 distances (B, P, H, W), float32 even under autocast.

        One batched matmul: |z|^2 - 2 z.p + |p|^2, clamped at 0 because rounding can make the
        difference slightly negative.
        """
        dtype = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            B, D, H, W = z.shape
            zf = z.to(dtype).flatten(2)  # (B, D, HW); a view even for channels_last
            p = self.prototypes.to(dtype)
            z2 = zf.square().sum(dim=1, keepdim=True)  # (B, 1, HW)
            p2 = p.square().sum(dim=1)[None, :, None]  # (1, P, 1)
            zp = torch.matmul(p, zf)  # (P, D) @ (B, D, HW) -> (B, P, HW)
            return F.relu(z2 - 2 * zp + p2).view(B, -1, H, W)

    def similarity_map(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> log similarity of every prototype at every cell (B, P, H, W)."""
        return log_similarity(self.distances(z))

    def classify(self, min_d: torch.Tensor) -> torch.Tensor:
        """Min distances (B, P) -> logits (B, K); masked prototypes contribute nothing."""
        sim = log_similarity(min_d) * self.prototype_mask.to(min_d.dtype)
        return self.last_layer(sim)

    def head(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, D, H, W) -> (logits (B, K), min_d (B, P)); what the cached stages call."""
        min_d = self.distances(z).flatten(2).amin(dim=2)
        return self.classify(min_d), min_d

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encode(x))

    # -- helpers ----------------------------------------------------------------------------------
    def grid_size(self) -> tuple[int, int]:
        """(H, W) of the latent grid for cfg.img_size, found by a dry run of the backbone (cached)."""
        size = self.cfg.img_size
        if self._grid is None or self._grid[0] != size:
            # eval() for the dry run: a train-mode BatchNorm would update its running stats.
            modes = [(m, m.training) for m in self.features.modules()]
            self.features.eval()
            ref = self.prototypes
            try:
                with torch.no_grad():
                    out = self.features(torch.zeros(1, 3, size, size, device=ref.device, dtype=ref.dtype))
            except RuntimeError as e:
                raise BadInput(f"img_size {size} is too small for backbone {self.cfg.backbone}") from e
            finally:
                for m, mode in modes:
                    m.training = mode
            self._grid = (size, (int(out.shape[-2]), int(out.shape[-1])))
        return self._grid[1]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights and buffers of the encoder, keyed as in state_dict() ("features.*", "add_on.*")."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("features.", "add_on."))}

    def encoder_digest(self) -> str:
        """sha256 of the encoder's tensors: equal digests <=> equal latents for equal inputs.

        BatchNorm's num_batches_tracked is left out: it counts steps but does not change outputs.
        """
        h = hashlib.sha256()
        for k, v in sorted(self.encoder_state_dict().items()):
            if k.endswith("num_batches_tracked"):
                continue
            t = v.detach().to("cpu").contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def build_model(
    cfg: ModelConfig, pretrained: bool = False, weights: str | Path | None = None, seed: int | None = None
) -> ProtoPNet:
    """Backbone (see backbones.build_backbone) + fresh add-on, prototypes and last layer.

    With `seed`, random initialisation uses that seed without touching the global RNG state.
    """
    from protocli.backbones import build_backbone

    def build() -> ProtoPNet:
        features, channels = build_backbone(cfg.backbone, pretrained=pretrained, weights=weights)
        return ProtoPNet(cfg, features, channels)

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def export_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict ready for safetensors.save_file: detached, on the CPU, contiguous.

    channels_last turns conv weights non-contiguous, which safetensors refuses to write.
    """
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def pushed_prototypes(push_dir: Path) -> torch.Tensor:
    """The prototype vectors a push stage saved (P, D) float32: the latent vectors they were pushed to."""
    from protocli.runfiles import pushed_vectors

    return torch.from_numpy(pushed_vectors(push_dir))
