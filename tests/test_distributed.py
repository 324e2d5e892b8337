"""Two CPU processes (gloo) against one: cache, push and evaluate are exact, DDP training matches one
process with the same global batch, --resume works, and a failing rank ends the job with one line.

Each test launches real processes (torch import included), so this module costs ~20 s in all; the
job runs once (module fixture) and the tests check its parts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from protocli.cache import latents, masks
from protocli.evaluate import activation_precision, evaluate_run
from protocli.nearest import nearest_patches
from protocli.push import push_run
from protocli.run import Run

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def job(tiny_data, _tiny_run_master, tmp_path_factory):
    """Run tests/_distjob.py under torchrun with 2 processes; returns (out dir, rank 0 result, rank 1 result)."""
    out = tmp_path_factory.mktemp("dist")
    push_dir = out / "pushed"
    shutil.copytree(_tiny_run_master, push_dir)
    shutil.rmtree(push_dir / "cache")  # the job builds it in shards
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_port()), str(ROOT / "tests" / "_distjob.py"), str(out), str(tiny_data),
           str(_tiny_run_master), str(push_dir)]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, torch.load(out / "rank0.pt", weights_only=False), torch.load(out / "rank1.pt", weights_only=False)


@pytest.fixture
def one_thread():
    """The job's processes run one thread each; oneDNN's convolutions may round differently with
    more threads, so the single-process reference runs with one as well."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _same(u, v)
    else:
        assert a == b


def test_cache_push_search_and_activation_precision_equal_one_process(job, _tiny_run_master, one_thread):
    _, r0, r1 = job
    run = Run.open(_tiny_run_master)
    cub, model = run.cub(), run.load_model(CPU)
    z, y = latents(model, cub, "train", crop=run.crop, cache_dir=None, device=CPU, batch_size=8)
    zte, yte = latents(model, cub, "test", crop=run.crop, cache_dir=None, device=CPU, batch_size=8)
    mte = masks(cub, "test", size=model.cfg.img_size, crop=run.crop, cache_dir=None)
    for r in (r0, r1):  # every rank holds the whole, single-process result
        _same(r["latents"], (z, y))
        _same(r["nearest"], nearest_patches(model, z, y, CPU, batch_size=8))
        assert r["apr"] == activation_precision(model, zte, yte, mte, CPU, batch_size=4)


def test_push_and_evaluate_stages_equal_one_process(job, _tiny_run_master, tmp_path, one_thread):
    out, r0, _ = job
    single = tmp_path / "single"
    shutil.copytree(_tiny_run_master, single)
    push_run(single, CPU)
    ev = evaluate_run(single, device=CPU)
    a, b = Run.open(single).latest_push(), Run.open(out / "pushed").latest_push()
    assert a.name == b.name
    assert json.loads((a / "prototypes.json").read_text()) == json.loads((b / "prototypes.json").read_text())
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    _same(sorted(wa.items()), sorted(wb.items()))
    pics = sorted(f.relative_to(a) for f in a.rglob("*.png"))
    assert pics and pics == sorted(f.relative_to(b) for f in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in pics)
    for key in ev:
        if key != "run":
            assert r0["evaluate"][key] == ev[key], key
    assert Run.open(out / "pushed").manifest["stages"][-1]["kind"] == "push"  # written once, by rank 0


def _reference_losses(data, cfg: dict, world: int, per_process_bn: bool = True) -> list[dict]:
    """One process, the same global batches as `world` DDP processes: batch k of an epoch is items
    perm[kB:(k+1)B] of DistributedSampler's permutation (seed + epoch), B the global batch, rank r
    holding perm[r::world]. With `per_process_bn` each rank's part goes through the model on its own
    (BatchNorm statistics per part, as in DDP) and the gradient is the mean of the parts' gradients
    (DDP's all-reduce); otherwise the global batch goes through at once (`train_epoch`)."""
    from torch.utils.data import DataLoader

    from protocli.data.cub import ImageSet, open_cub
    from protocli.data.transforms import eval_transform
    from protocli.losses import protopnet_loss
    from protocli.model import ModelConfig, build_model
    from protocli.runtime import seed_everything
    from protocli.train import TrainConfig, make_optimizers, set_phase, train_epoch

    c = TrainConfig(**cfg)
    cub = open_cub(data)
    seed_everything(c.seed)
    model = build_model(ModelConfig(backbone=c.backbone, num_classes=len(cub.classes),
                                    prototypes_per_class=c.prototypes_per_class, proto_dim=c.proto_dim,
                                    add_on=c.add_on, img_size=c.img_size))
    warm, joint, _ = make_optimizers(model, c)
    ds = ImageSet(cub, "train", eval_transform(c.img_size), crop=c.crop)
    n, per = len(ds), c.batch_size // world
    assert n % world == 0  # no padding by the sampler
    out = []
    for epoch in range(c.warm_epochs + c.joint_epochs):
        phase = "warm" if epoch < c.warm_epochs else "joint"
        opt = warm if phase == "warm" else joint
        set_phase(model, phase)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(c.seed + epoch)).tolist()
        ranks = [perm[r::world] for r in range(world)]
        if not per_process_bn:
            batches = [sum((rk[i:i + per] for rk in ranks), []) for i in range(0, n // world, per)]
            out.append(train_epoch(model, DataLoader(ds, batch_sampler=batches), opt, c.coefs(), CPU,
                                   amp=False, channels_last=False, desc=""))
            continue
        totals: dict = {}
        correct = 0
        for i in range(0, n // world, per):
            opt.zero_grad(set_to_none=True)
            for rk in ranks:
                x, y, _ = next(iter(DataLoader(ds, batch_sampler=[rk[i:i + per]])))
                logits, min_d = model(x)
                loss, parts = protopnet_loss(logits, min_d, y, model, c.coefs())
                (loss / world).backward()
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v * len(y)
                correct += int((logits.argmax(1) == y).sum())
            opt.step()
        rec = {k: v / n for k, v in totals.items()}
        rec["loss"] = rec.pop("total")
        rec["train_accuracy"] = correct / n
        out.append(rec)
    return out


def test_ddp_training_matches_one_process_with_the_same_global_batch(job, tiny_data, tiny_train_cfg, one_thread):
    """Against one process that feeds each rank's part of every global batch separately (BatchNorm
    statistics per process, the default) and averages the gradients: the same losses up to float
    summation order, which Adam amplifies a little from step to step (measured: 1e-8 relative in the
    warm epoch, 2e-6 after one joint epoch, 1.2e-4 after two; checked at 1e-3). Against one process that feeds the whole global batch: equal while BatchNorm is
    frozen (warm); in joint epochs BatchNorm's batch statistics differ (on this tiny data ~2% in loss
    after one joint epoch, cluster/separation costs 5-20% after two), which --sync-bn removes on CUDA."""
    out, _, _ = job
    cfg = {**tiny_train_cfg, "joint_epochs": 2, "last_epochs": 1}
    run = Run.open(out / "trained")
    got = [json.loads(line) for line in (run.path / "stages" / "001-train" / "metrics.jsonl").read_text().splitlines()]
    assert [g["phase"] for g in got] == ["warm", "joint", "joint"]
    ref = _reference_losses(tiny_data, cfg, world=2)
    whole = _reference_losses(tiny_data, {**cfg, "joint_epochs": 0}, world=2, per_process_bn=False)
    for k in ("loss", "crs_ent", "clst", "sep", "train_accuracy"):
        for g, r in zip(got, ref, strict=True):
            assert g[k] == pytest.approx(r[k], rel=1e-3, abs=1e-6), k
        assert got[0][k] == pytest.approx(whole[0][k], rel=1e-5, abs=1e-6), k
    # An ordinary run folder: the usual stages, readable by one process.
    assert [s["kind"] for s in run.stage_log()] == ["train", "push", "last"]
    assert run.stage_log("train")[0]["processes"] == 2
    assert evaluate_run(out / "trained", device=CPU)["prototypes"] == 8


def test_resume_under_two_processes_gives_the_same_weights(job):
    out, _, _ = job
    a, b = load_file(str(out / "trained" / "model.safetensors")), load_file(str(out / "cut" / "model.safetensors"))
    _same(sorted(a.items()), sorted(b.items()))


def test_a_failing_rank_ends_every_process_with_its_exit_code_and_one_line(tiny_data, tmp_path):
    """`protocli train` launched as torchrun launches it (RANK, WORLD_SIZE, ... set), one image broken
    in rank 1's share of the first epoch: both processes exit 2 and only one error line is printed."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    from protocli.data.cub import open_cub

    items = open_cub(data).split("train")
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    broken = items[perm[1]]  # the first image DistributedSampler deals to rank 1 in epoch 0
    (data / "images" / broken.name).write_bytes(b"not a picture")
    env = {**_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port())}
    cmd = [sys.executable, "-m", "protocli", "train", str(data), str(tmp_path / "run"), "--backbone", "tiny",
           "--img-size", "32", "--prototypes-per-class", "1", "--proto-dim", "8", "--batch-size", "8",
           "--workers", "0", "--no-augment", "--device", "cpu", "-q"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    lines = [line for _, err in outs for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and broken.name in lines[0], lines
    assert outs[1][1].strip() == lines[0]  # rank 1 found the fault and spoke; rank 0 stayed quiet
    assert not (tmp_path / "run" / "stages" / "001-train").exists()


def test_shards_are_whole_batches_that_cover_every_item_once():
    from protocli.distributed import Dist, shard_range

    for n in (0, 1, 7, 40, 64, 65, 1000):
        for world in (1, 2, 3, 8):
            for block in (1, 8, 64, 100):
                parts = [shard_range(n, Dist(rank=r, world=world), block) for r in range(world)]
                assert [i for a, b in parts for i in range(a, b)] == list(range(n))
                assert all(a % block == 0 for a, b in parts if b > a)


def test_merging_shard_bests_is_the_single_process_first_found_rule(one_thread):
    """Duplicated images make exact ties inside and across shards; one class has no image at all."""
    from protocli.distributed import Dist, shard_range
    from protocli.model import ModelConfig, build_model
    from protocli.nearest import merge_best

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", num_classes=4, prototypes_per_class=3, proto_dim=8, img_size=32))
    base = torch.rand(6, 8, 4, 4)
    z = torch.cat([base, base, base[:3], base]).half()  # 21 images, every latent repeated
    y = torch.tensor([0, 1, 2, 0, 1, 2] * 3 + [0, 1, 2])[: len(z)]  # class 3 has no image
    with torch.no_grad():
        model.prototypes.copy_(z[[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], :, 1, 2].float())  # exact hits on copies
    one = nearest_patches(model, z, y, CPU, batch_size=4)
    for world in (2, 3, 5):
        parts = []
        for r in range(world):
            a, b = shard_range(len(z), Dist(rank=r, world=world), 4)
            if b > a:
                d, img, cell = nearest_patches(model, z[a:b], y[a:b], CPU, batch_size=4)
                parts.append((d, img + a, cell))
        best = merge_best(*(torch.stack(t) for t in zip(*parts, strict=True)))
        for got, want in zip(best, one[:3], strict=True):
            assert torch.equal(got, want), world
    assert bool(torch.isinf(one[0][9:]).all()) and one[1][9:].tolist() == [0, 0, 0]
