"""Latent cache: (frozen encoder, dataset split) -> latent grids (N, D, H, W) in fp16, and masks.

While the encoder is frozen (push, evaluate, simulate, mask, revise, last-layer training) every
image's latent grid is a constant, so it is computed once and kept on disk. The key hashes the
encoder's weights, the dataset fingerprint, the split, the crop flag, the image size and the
transform and encode versions: a changed encoder can never read a stale cache. The encoder runs in
full fp32 (no autocast, no TF32: push, evaluate, simulate and revise all read these numbers, and a
bf16 pass was measured off by up to 0.19 per entry), and the result is stored as fp16, which is
plenty for values in [0, 1] (the add-on ends in a Sigmoid): the rounding error is at most
2^-12 ~ 2.4e-4 per entry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from protocli.console import check_cancel, progress_bar
from protocli.runtime import default_workers, exact_fp32

TRANSFORM_VERSION = "eval-v1"  # bump when eval_transform changes
ENCODE_VERSION = "fp32-v2"  # bump when the latents' numerics change (v1 ran under bf16 autocast on CUDA)


def _key(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def latents(model, cub, split: str, *, crop: bool, cache_dir: Path | None, device: torch.device,
            batch_size: int = 100, workers: int | None = None, dist=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent grids and labels of a split: (Z fp16 CPU (N, D, H, W), y long (N,)). Cached on disk.

    Computed in fp32 whatever the training used (`runtime.exact_fp32`), stored in fp16. In a job of
    several processes (`dist`, default: the current one) each encodes its shard of whole batches,
    all gather the grids in index order and rank 0 writes the file."""
    from safetensors.torch import load_file, save

    from protocli import distributed
    from protocli.data.cub import ImageSet
    from protocli.data.transforms import eval_transform
    from protocli.files import atomic_write_bytes

    key = _key([model.encoder_digest(), cub.fingerprint(), split, str(crop), str(model.cfg.img_size), TRANSFORM_VERSION,
                ENCODE_VERSION])
    path = Path(cache_dir) / f"latents-{split}-{key}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        try:
            d = load_file(str(path))
            return d["z"], d["y"]
        except Exception:  # a damaged cache file is just recomputed
            path.unlink(missing_ok=True)

    dist = dist or distributed.current()
    ds = ImageSet(cub, split, eval_transform(model.cfg.img_size), crop=crop)
    if dist.on:
        ds = torch.utils.data.Subset(ds, range(*distributed.shard_range(len(ds), dist, batch_size)))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False,
                        num_workers=default_workers() if workers is None else workers,
                        pin_memory=device.type == "cuda")
    zs, ys = [], []
    was_training = model.training
    model.eval()
    # No autocast here even if a caller holds one (cpu autocast would also trip torch.cat on fp16).
    with torch.no_grad(), torch.autocast(device.type, enabled=False), torch.autocast("cpu", enabled=False), \
            exact_fp32():
        with progress_bar(f"encode {split}", len(ds)) as advance:
            for x, y, _ in loader:
                x = x.to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                z = model.encode(x)
                zs.append(z.float().half().cpu())
                ys.append(y)
                advance(len(y))
        # inside the autocast-free block: cpu autocast would trip torch.cat on fp16
        z, y = (torch.cat(zs), torch.cat(ys).long()) if zs else (torch.empty(0), torch.empty(0, dtype=torch.long))
    model.train(was_training)
    z, y = distributed.gather_rows(z, dist), distributed.gather_rows(y, dist)
    if path is not None and dist.is_main():
        for old in Path(cache_dir).glob(f"latents-{split}-*.safetensors"):
            old.unlink(missing_ok=True)  # stale: the encoder or data changed
        atomic_write_bytes(path, save({"z": z.contiguous(), "y": y}))
    distributed.barrier(dist)  # the file is complete before any rank reads it
    return z, y



def run_latents(run, model, cub, device: torch.device,
                dist=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cached train and test latents of a run's model: (z_train, y_train, z_test, y_test)."""
    ztr, ytr = latents(model, cub, "train", crop=run.crop, cache_dir=run.cache_dir, device=device, dist=dist)
    zte, yte = latents(model, cub, "test", crop=run.crop, cache_dir=run.cache_dir, device=device, dist=dist)
    return ztr, ytr, zte, yte


def masks(cub, split: str, *, size: int, crop: bool, cache_dir: Path | None) -> torch.Tensor:
    """Object masks of a split in input space: bool (N, S, S). Needs a dataset with masks."""
    from safetensors.torch import load_file, save

    from protocli.data.transforms import mask_transform
    from protocli.files import atomic_write_bytes

    key = _key([cub.fingerprint(), split, str(crop), str(size), TRANSFORM_VERSION])
    path = Path(cache_dir) / f"masks-{split}-{key}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        try:
            return load_file(str(path))["m"].bool()
        except Exception:
            path.unlink(missing_ok=True)
    tf = mask_transform(size)
    items = cub.split(split)
    out = torch.empty(len(items), size, size, dtype=torch.bool)
    with progress_bar(f"masks {split}", len(items)) as advance:
        for i, item in enumerate(items):
            out[i] = tf(cub.mask(item, crop=crop))[0] > 0.5
            advance()
    if path is not None:
        atomic_write_bytes(path, save({"m": out.to(torch.uint8)}))
    return out


def grid_masks(cub, split: str, *, grid, crop: bool, cache_dir: Path | None) -> torch.Tensor:
    """Object masks shrunk to the latent grid as the authors' code does: uint8 (N, H, W), 0..255.

    Each raw mask - values 0/255, cropped like its image (`cub.mask`) and still at the image's own
    resolution, not first resized to the input size - goes straight to the grid with PIL's default
    `resize` filter for such images (antialiased bicubic, a = -0.5; results rounded and clipped to
    0..255). No threshold: the `cell` criterion asks whether the value is exactly 0.
    """
    from safetensors.torch import load_file, save

    from protocli.files import atomic_write_bytes

    H, W = (int(v) for v in grid)
    key = _key([cub.fingerprint(), split, str(crop), f"{H}x{W}", "grid-pil-default-v1"])
    path = Path(cache_dir) / f"gridmasks-{split}-{key}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        try:
            return load_file(str(path))["m"]
        except Exception:
            path.unlink(missing_ok=True)
    items = cub.split(split)
    out = torch.empty(len(items), H, W, dtype=torch.uint8)
    with progress_bar(f"grid masks {split}", len(items)) as advance:
        for i, item in enumerate(items):
            # resize() without a filter: PIL's default (BICUBIC for mode "L"), exactly as the authors call it
            out[i] = torch.from_numpy(np.array(cub.mask(item, crop=crop).resize((W, H)), dtype=np.uint8))
            advance()
    if path is not None:
        atomic_write_bytes(path, save({"m": out}))
    return out


def min_distances(model, z: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """min over the grid of the squared distances, (N, P) float32 on CPU, for fixed prototypes."""
    out = torch.empty(len(z), model.num_prototypes)  # filled in place: no heap fragmentation (see push)
    with torch.no_grad():
        for i in range(0, len(z), batch_size):
            check_cancel()
            d = model.distances(z[i:i + batch_size].to(device).float())
            out[i:i + batch_size] = d.flatten(2).min(dim=2).values
    return out
