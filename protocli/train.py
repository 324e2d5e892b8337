"""`protocli train`: dataset + config -> a run with the baseline ProtoPNet (warm, joint, push, last layer).

Stages written: NNN-train (warm and joint epochs, resumable from `checkpoint.pt`), NNN-push, NNN-last.
Under torchrun (`dist`) the warm and joint epochs run DistributedDataParallel: --batch-size is the
global batch, split evenly over the processes; a DistributedSampler reseeded each epoch deals the
images; BatchNorm normalises with each process's own batch statistics (as DataParallel did for the
original), or over the global batch with --sync-bn (CUDA). Rank 0 writes; all ranks keep equal weights.
Frozen parts are in eval() mode and have requires_grad=False, so BatchNorm statistics stay put
while frozen (the original code kept them in train mode and let them drift). The last layer is
trained on the latent cache: with the encoder and prototypes fixed, its input (the min distances)
is a constant per image, so an epoch is one small matmul.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from protocli import distributed, losses
from protocli.console import info, progress_bar, warn
from protocli.errors import BadInput
from protocli.files import append_jsonl
from protocli.phases import set_phase, train_last_layer
from protocli.push import push_model  # a stage of its own, also train's step before the last layer
from protocli.recipes import TrainConfig
from protocli.runtime import autocast, default_workers, seed_everything


def make_optimizers(model, cfg: TrainConfig):
    warm = torch.optim.Adam([
        {"params": model.add_on.parameters(), "lr": cfg.lr_add_on, "weight_decay": cfg.weight_decay},
        {"params": [model.prototypes], "lr": cfg.lr_prototypes},
    ])
    joint = torch.optim.Adam([
        {"params": model.features.parameters(), "lr": cfg.lr_features, "weight_decay": cfg.weight_decay},
        {"params": model.add_on.parameters(), "lr": cfg.lr_add_on, "weight_decay": cfg.weight_decay},
        {"params": [model.prototypes], "lr": cfg.lr_prototypes},
    ])
    # Stepped after each joint epoch: x0.1 every lr_step epochs (the original stepped before the epoch,
    # which decays one epoch early; we follow the documented "every 5 epochs").
    sched = torch.optim.lr_scheduler.StepLR(joint, step_size=max(1, cfg.lr_step), gamma=0.1)
    return warm, joint, sched


def train_epoch(model, loader, optimizer, coefs: dict, device, *, amp: bool, channels_last: bool, desc: str,
                net=None, dist=distributed.SINGLE) -> dict:
    """One pass over `loader` with the full ProtoPNet loss; returns mean loss parts and accuracy.

    `net` is what runs the forward pass (the DistributedDataParallel wrapper of `model`, default `model`);
    with `dist` the returned means are over every process's images."""
    net = net or model
    totals: dict[str, float] = {}
    correct = seen = 0
    with progress_bar(desc, len(loader.sampler) * dist.world) as advance:
        for x, y, _ in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits, min_d = net(x)
            loss, parts = losses.protopnet_loss(logits.float(), min_d.float(), y, model, coefs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(y)
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            correct += int((logits.argmax(1) == y).sum())
            seen += n
            advance(n * dist.world, info=f"loss {totals.get('total', 0) / seen:.3f} acc {correct / seen:.3f}")
    if dist.on:  # means over the whole epoch, not rank 0's share
        keys = sorted(totals)
        *vals, correct, seen = distributed.all_sum([totals[k] for k in keys] + [correct, seen], dist)
        totals = dict(zip(keys, vals, strict=True))
    out = {k: v / max(seen, 1) for k, v in totals.items()}
    out["loss"] = out.pop("total", None)
    out["train_accuracy"] = correct / max(seen, 1)
    return out


def _loader(cub, split, transform, cfg: TrainConfig, shuffle: bool, generator: torch.Generator, device,
            dist=distributed.SINGLE):
    from protocli.data.cub import ImageSet

    workers = default_workers() if cfg.workers is None else cfg.workers
    if dist.on:  # this rank's share of every global batch; the sampler is reseeded by set_epoch
        from torch.utils.data.distributed import DistributedSampler

        ds = ImageSet(cub, split, transform, crop=cfg.crop)
        sampler = DistributedSampler(ds, num_replicas=dist.world, rank=dist.rank, shuffle=shuffle, seed=cfg.seed)
        return DataLoader(ds, batch_size=cfg.batch_size // dist.world, sampler=sampler, num_workers=workers,
                          generator=generator, drop_last=False, pin_memory=device.type == "cuda")
    return DataLoader(ImageSet(cub, split, transform, crop=cfg.crop), batch_size=cfg.batch_size,
                      shuffle=shuffle, num_workers=workers, generator=generator, drop_last=False,
                      pin_memory=device.type == "cuda")  # fresh workers each epoch: their seeds come from `generator`, so --resume is exact


def _save_checkpoint(path: Path, model, warm, joint, sched, epoch: int, loader_gen: torch.Generator,
                     dist=distributed.SINGLE, rank_gen: torch.Generator | None = None) -> None:
    import io

    from protocli.files import atomic_write_bytes

    ck = {"model": model.state_dict(), "warm": warm.state_dict(), "joint": joint.state_dict(),
          "sched": sched.state_dict(), "epoch": epoch, "rng": torch.get_rng_state(),
          "loader_rng": loader_gen.get_state()}
    if dist.on:  # every rank's own random state (augmentation), so that --resume continues each of them
        ck["rng_ranks"] = distributed.gather_objects((torch.get_rng_state(), rank_gen.get_state()), dist)
    if dist.is_main():
        buf = io.BytesIO()
        torch.save(ck, buf)
        atomic_write_bytes(path, buf.getvalue())
    distributed.barrier(dist)  # no rank runs ahead of the checkpoint it would resume from


def _wrap(model, cfg: TrainConfig, device, dist):
    """DistributedDataParallel over the parameters that train in the current phase (built per phase:
    DDP registers the parameters that require grad when it is made)."""
    if not dist.on:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Buffers (BatchNorm running statistics) go from rank 0 to all before each forward (DDP's default).
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _resume(ckpt_path: Path, model, optimizers: tuple, generator: torch.Generator, rank_gen: torch.Generator,
            dist) -> int:
    """Load the train stage's checkpoint: weights, optimizers and scheduler (`optimizers` = warm, joint,
    sched), the random states (this rank's own under a job of the same size) -> the next epoch."""
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    for opt, key in zip(optimizers, ("warm", "joint", "sched"), strict=True):
        opt.load_state_dict(ck[key])
    torch.set_rng_state(ck["rng"])
    generator.set_state(ck["loader_rng"])
    if dist.on and len(ck.get("rng_ranks") or []) == dist.world:
        rng, loader_rng = ck["rng_ranks"][dist.rank]
        torch.set_rng_state(rng)
        rank_gen.set_state(loader_rng)
    elif dist.on:
        warn("resumed with another number of processes: augmentation draws differ from an uninterrupted run")
    return ck["epoch"] + 1


def _fit(run, model, cub, cfg: TrainConfig, device, generator: torch.Generator,
         dist=distributed.SINGLE) -> dict:
    """Warm and joint epochs inside the resumable train stage."""
    from protocli.data.transforms import eval_transform, train_transform

    tf = train_transform(cfg.img_size) if cfg.augment else eval_transform(cfg.img_size)
    if dist.on and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    warm, joint, sched = make_optimizers(model, cfg)
    coefs = cfg.coefs()
    total = cfg.warm_epochs + cfg.joint_epochs
    last: dict = {}
    rank_gen = generator
    if dist.on:
        # Each process draws its own augmentations (its global RNG in the loop, its generator for
        # worker seeds); `generator` itself stays equal on all ranks for the last layer.
        rank_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * (dist.rank + 1))
        torch.manual_seed(cfg.seed + 1_000_003 * (dist.rank + 1))
    with distributed.stage(run, "train", dist, resumable=True) as st:
        ckpt_path = st.dir / "checkpoint.pt"
        start = 0
        if ckpt_path.exists():
            start = _resume(ckpt_path, model, (warm, joint, sched), generator, rank_gen, dist)
            info(f"resuming training at epoch {start + 1} of {total}")
        loader = _loader(cub, "train", tf, cfg, True, rank_gen, device, dist)
        net, net_phase = model, None
        for epoch in range(start, total):
            phase = "warm" if epoch < cfg.warm_epochs else "joint"
            set_phase(model, phase)
            if phase != net_phase:
                net, net_phase = _wrap(model, cfg, device, dist), phase
            if dist.on:
                loader.sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            last = train_epoch(model, loader, warm if phase == "warm" else joint, coefs, device,
                               amp=cfg.amp, channels_last=cfg.channels_last,
                               desc=f"{phase} {epoch + 1}/{total}", net=net, dist=dist)
            if phase == "joint":
                sched.step()
            last.update(phase=phase, epoch=epoch, seconds=round(time.perf_counter() - t0, 3))
            if st.main:
                append_jsonl(st.dir / "metrics.jsonl", last)
            _save_checkpoint(ckpt_path, model, warm, joint, sched, epoch, generator, dist, rank_gen)
        del net
        set_phase(model, "frozen")
        _sync_buffers(model, dist)
        st.save_model(model)
        if st.main:
            ckpt_path.unlink(missing_ok=True)  # large, and useless once the stage is committed
        st.info.update({k: last.get(k) for k in ("train_accuracy", "loss")}, epochs=total)
        if dist.on:
            st.info.update(processes=dist.world, sync_bn=cfg.sync_bn)
    return last


def _sync_buffers(model, dist) -> None:
    """Rank 0's BatchNorm running statistics everywhere (DDP sends them before each forward, so the
    last step's update differs per rank): all ranks then encode with the weights rank 0 saves."""
    if not dist.on:
        return
    import torch.distributed as td

    for b in model.buffers():
        t = b.data.to(dist.comm)
        td.broadcast(t, 0)
        b.data.copy_(t)


def _check_options(cfg: TrainConfig, device: torch.device, dist) -> None:
    if cfg.stop_after not in ("joint", "push", "last"):
        raise BadInput(f"--stop-after {cfg.stop_after}: expected joint, push or last")
    if dist.on and cfg.batch_size % dist.world:
        raise BadInput(f"--batch-size {cfg.batch_size}: the global batch must split evenly over {dist.world} processes")
    if cfg.sync_bn and dist.on and device.type != "cuda":
        raise BadInput("--sync-bn: torch's SyncBatchNorm runs on CUDA only; without it each process "
                       "normalises with its own batch statistics")


def _reopen(run_dir: Path, cfg: TrainConfig, cub, data: Path):
    """The run to resume and the config it started with (only --workers is taken from `cfg`)."""
    from protocli.run import Run

    run = Run.open(run_dir)
    saved = TrainConfig(**run.manifest["train"])
    if run.manifest["data"]["fingerprint"] != cub.fingerprint():
        raise BadInput("dataset differs from the one this run started on", data)
    return run, TrainConfig(**{**asdict(saved), "workers": cfg.workers})  # the run's config wins


def _create(run_dir: Path, data: Path, cub, cfg: TrainConfig, mcfg, device: torch.device, dist):
    """A new run folder (rank 0 writes it, the other ranks open it once it is there)."""
    from protocli.run import Run

    if not cub.split("train"):
        raise BadInput("dataset has no training images (train_test_split.txt)", data)
    if dist.is_main():
        run = Run.create(run_dir, data_root=data, crop=cfg.crop, fingerprint=cub.fingerprint(),
                         model_cfg=mcfg.to_dict(), train_cfg=asdict(cfg), seed=cfg.seed, device=str(device))
    distributed.barrier(dist)
    return run if dist.is_main() else Run.open(run_dir)


def _last_layer(run, model, cub, cfg: TrainConfig, train: tuple, generator: torch.Generator, device, dist) -> dict:
    """The "last" stage: the last layer fitted on the min distances of the cached latents -> its accuracies.
    Every rank fits the same small last layer (same inputs, same generator); rank 0 writes it."""
    from protocli.cache import latents, min_distances

    ztr, ytr = train
    zte, yte = latents(model, cub, "test", crop=cfg.crop, cache_dir=run.cache_dir, device=device,
                       workers=cfg.workers, dist=dist)
    md_tr, md_te = min_distances(model, ztr, device), min_distances(model, zte, device)
    with distributed.stage(run, "last", dist) as st:
        rec = train_last_layer(model, md_tr, ytr, epochs=cfg.last_epochs, lr=cfg.lr_last, l1=cfg.l1,
                               batch_size=cfg.batch_size, generator=generator, test=(md_te, yte),
                               log=st.dir / "metrics.jsonl" if st.main else None)
        st.save_model(model)
        st.info.update(train_accuracy=rec["train_accuracy"], test_accuracy=rec["test_accuracy"])
    return {"train_accuracy": rec["train_accuracy"], "test_accuracy": rec["test_accuracy"]}


def train_run(data: Path, run_dir: Path, cfg: TrainConfig, device: torch.device, resume: bool = False,
              dist=distributed.SINGLE) -> dict:
    """Create (or resume) a run and train the baseline. Returns a summary dict.

    `dist`: the job when torchrun started several processes (see protocli.distributed)."""
    from protocli.cache import latents
    from protocli.data.cub import open_cub
    from protocli.model import ModelConfig, build_model

    _check_options(cfg, device, dist)
    t0 = time.perf_counter()
    generator = seed_everything(cfg.seed)
    cub = open_cub(data)
    if resume:
        run, cfg = _reopen(run_dir, cfg, cub, data)
        generator = seed_everything(cfg.seed)
    mcfg = ModelConfig(backbone=cfg.backbone, num_classes=len(cub.classes),
                       prototypes_per_class=cfg.prototypes_per_class, proto_dim=cfg.proto_dim,
                       add_on=cfg.add_on, img_size=cfg.img_size)
    if not resume:
        run = _create(run_dir, data, cub, cfg, mcfg, device, dist)
    done = {s["kind"] for s in run.stage_log()}
    if "train" in done:
        model = run.load_model(device)
    else:
        model = build_model(mcfg, pretrained=cfg.pretrained,
                            weights=Path(cfg.weights) if cfg.weights else None).to(device)
        if cfg.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        _fit(run, model, cub, cfg, device, generator, dist)
    result = {"run": str(run.path), "device": str(device), "backbone": cfg.backbone,
              "grid": list(model.grid_size()), "prototypes": model.num_prototypes}
    result.update({k: v for k, v in run.stage_log("train")[-1].items() if k in ("train_accuracy", "loss")})
    if cfg.stop_after != "joint":
        ztr, ytr = latents(model, cub, "train", crop=cfg.crop, cache_dir=run.cache_dir, device=device,
                           workers=cfg.workers, dist=dist)
        if "push" not in done:
            push_model(run, model, cub, ztr, ytr, device, dist=dist)
            model = run.load_model(device)
        if cfg.stop_after == "last" and "last" not in done and cfg.last_epochs > 0:
            result.update(_last_layer(run, model, cub, cfg, (ztr, ytr), generator, device, dist))
    result["stages"] = [s["id"] for s in run.stage_log()]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
