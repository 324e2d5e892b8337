"""`protocli pretrain`: dataset -> an encoder weights file (.safetensors) for `train --weights FILE`.

The paper's ProtoPNet starts from an ImageNet-pretrained ResNet34: an encoder that learned objects
on broad data, then fine-tuned on the confounded bird set. Offline, with no ImageNet, this command
builds such an encoder from our own data: the backbone with a global-average-pool and linear head,
trained as a plain classifier (cross-entropy, the train augmentation) on a dataset of the same world
whose backgrounds carry no class information, e.g. `protocli data synth PRE --confound 0.125 --seed
1000` (8 classes: 1/8 is a uniform background draw). Its held-out split is scored and reported, and
only the backbone's weights are written (the head is a throw-away), in the key layout that
`protocli train --backbone NAME --weights FILE` loads, exactly as a user loads ImageNet weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from protocli.console import info, progress_bar
from protocli.errors import BadInput
from protocli.files import atomic_write_bytes
from protocli.model import IMAGENET_MEAN, IMAGENET_STD, export_state
from protocli.runtime import autocast, default_workers


class Classifier(nn.Module):
    """backbone -> global average pool -> linear: the plain classifier an encoder is pretrained as."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.features = backbone
        self.head = nn.Linear(channels, num_classes)
        # The same input normalisation as ProtoPNet.encode, so the encoder sees what it will see there.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.head(self.features((x - self.mean) / self.std).mean(dim=(2, 3)))


def _accuracy(model, loader, device, amp: bool) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y, _ in loader:
            x, y = x.to(device), y.to(device)
            with autocast(device, amp):
                correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return correct / max(seen, 1)


def _epoch(model, train: DataLoader, opt, sched, device, amp: bool, advance, desc: str) -> dict:
    """One pass of cross-entropy training over `train` (the schedule steps per batch) -> mean loss, accuracy."""
    model.train()
    correct = seen = 0
    total = 0.0
    for x, y, _ in train:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        advance(len(y), info=f"{desc} loss {total / seen:.3f} acc {correct / seen:.3f}")
    return {"loss": total / seen, "train_accuracy": correct / seen}


def _check_options(out: Path, epochs: int, batch_size: int, img_size: int, lr: float) -> Path:
    for name, v in (("epochs", epochs), ("batch-size", batch_size), ("img-size", img_size)):
        if v < 1:
            raise BadInput(f"--{name} {v}: must be at least 1")
    if not lr > 0:
        raise BadInput(f"--lr {lr}: must be positive")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise BadInput("the weights file must end in .safetensors", out)
    return out


def pretrain(data: Path, out: Path, *, backbone: str = "tiny", img_size: int = 96, epochs: int = 16,
             batch_size: int = 64, lr: float = 5e-3, weight_decay: float = 1e-4, crop: bool = True,
             device=None, generator: torch.Generator | None = None, workers: int | None = None,
             amp: bool = True) -> dict:
    """Train `backbone` as a classifier on DATA's train split; write its weights to OUT (atomic)."""
    from safetensors.torch import save

    from protocli.backbones import build_backbone
    from protocli.data.cub import ImageSet, open_cub
    from protocli.data.transforms import eval_transform, train_transform

    out = _check_options(out, epochs, batch_size, img_size, lr)
    t0 = time.perf_counter()
    device = device or torch.device("cpu")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    cub = open_cub(data)
    if not cub.split("train"):
        raise BadInput("dataset has no training images (train_test_split.txt)", data)
    features, channels = build_backbone(backbone)
    model = Classifier(features, channels, len(cub.classes)).to(device)
    nw = default_workers() if workers is None else workers
    train = DataLoader(ImageSet(cub, "train", train_transform(img_size), crop=crop), batch_size=batch_size,
                       shuffle=True, num_workers=nw, generator=generator, pin_memory=device.type == "cuda")
    held = cub.split("test")
    test = DataLoader(ImageSet(cub, "test", eval_transform(img_size), crop=crop), batch_size=100,
                      num_workers=nw) if held else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # Cosine decay to 0: a short schedule that ends settled, so the encoder it leaves is not mid-step.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(train), pct_start=0.15)
    history = []
    with progress_bar("pretrain", epochs * len(train.dataset)) as advance:
        for epoch in range(epochs):
            rec = _epoch(model, train, opt, sched, device, amp, advance, f"epoch {epoch + 1}")
            history.append({"epoch": epoch, **rec})
    held_acc = _accuracy(model, test, device, amp) if test is not None else None
    state = export_state(model.features)
    meta = {"protocli": "pretrain", "backbone": backbone, "img_size": str(img_size), "data": str(Path(data).resolve()),
            "held_out_accuracy": f"{held_acc}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save(state, metadata=meta))
    secs = round(time.perf_counter() - t0, 1)
    info(f"pretrained {backbone}: train {history[-1]['train_accuracy']:.3f}, held-out "
         f"{held_acc if held_acc is None else round(held_acc, 3)} -> {out} ({secs}s)")
    return {"weights": str(out), "backbone": backbone, "img_size": img_size, "epochs": epochs,
            "train_accuracy": history[-1]["train_accuracy"], "held_out_accuracy": held_acc,
            "classes": len(cub.classes), "images": len(train.dataset), "history": history, "seconds": secs}
