"""Several processes, one job (`torchrun --nproc-per-node N -m protocli ...`): env -> process group,
shards, gathers, rank-0-only writes and one shared exit code.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT). With a world of one (a plain run,
or torchrun with one process) nothing here starts a process group and every helper is the identity,
so the single-process path is unchanged. Otherwise: gloo on CPU, NCCL on CUDA (process i takes
cuda:LOCAL_RANK). Work is sharded in contiguous blocks whose starts are multiples of the batch size,
so every batch holds the same images as in one process and gathered results are bit-identical.
Only rank 0 writes into the run folder; the others wait at the stage's end, then re-read the manifest.
The run folder must be on a filesystem that every process sees (one machine, or a shared mount).

Failure: the first process to fail counts itself in the rendezvous store, records its exit code,
prints its one line and exits; the others, whose next collective breaks, read that code and exit
with it silently (under torchrun the agent also stops them).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from protocli.errors import BadInput

_FAILED, _CODE = "protocli/failed", "protocli/code"


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job. `comm` is the device collectives run on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    comm: str = "cpu"

    @property
    def on(self) -> bool:
        return self.world > 1

    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()
_CURRENT = [SINGLE]


def current() -> Dist:
    """The job this process belongs to (SINGLE unless `setup` started a process group)."""
    return _CURRENT[0]


def launched_world() -> int:
    """Processes torchrun started (1 when not under torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def setup(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Pick this process's device and join the process group torchrun described -> (Dist, device)."""
    from protocli.runtime import pick_device

    world = launched_world()
    if world == 1:
        return SINGLE, pick_device(device_name)
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device_name.startswith("cuda:"):
        raise BadInput(f"--device {device_name}: under torchrun each process takes cuda:LOCAL_RANK; "
                       "give --device cuda (or auto)")
    device = pick_device(device_name)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise BadInput(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                              device_id=device if device.type == "cuda" else None)
    d = Dist(rank=rank, world=world, local_rank=local, comm=str(device) if device.type == "cuda" else "cpu")
    _CURRENT[0] = d
    if rank != 0:
        from protocli.console import QUIET

        QUIET["on"] = True  # progress and tables come from rank 0 only
    return d, device


def leave() -> None:
    """Continue alone: later stages run on rank 0 without collectives (the others have finished)."""
    _CURRENT[0] = SINGLE


def share_cache(run_dir, dist: Dist, device: torch.device) -> bool:
    """For commands whose heavy shared part is the latent cache (mask, revise, rounds): all processes
    build the run's train and test cache together, then rank 0 carries on alone -> whether this one does."""
    if not dist.on:
        return True
    from protocli.cache import run_latents
    from protocli.run import Run

    run = Run.open(run_dir)
    run_latents(run, run.load_model(device), run.cub(), device, dist=dist)
    leave()
    return dist.is_main()


# ------------------------------------------------------------------------------------- sharding
def shard_range(n: int, dist: Dist, block: int = 1) -> tuple[int, int]:
    """This rank's contiguous part [a, b) of n items, cut at multiples of `block` (the batch size)."""
    if not dist.on:
        return 0, n
    blocks = -(-n // block)
    lo, hi = dist.rank * blocks // dist.world, (dist.rank + 1) * blocks // dist.world
    return min(n, lo * block), min(n, hi * block)


def gather_rows(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (= index order for `shard_range` shards), on every rank."""
    if not dist.on:
        return t
    import torch.distributed as td

    meta = gather_objects((len(t), tuple(t.shape[1:]), t.dtype), dist)
    sizes = [m[0] for m in meta]
    # An empty shard (fewer batches than ranks) may not know the row shape: take it from a full one.
    _, shape, dtype = next((m for m in meta if m[0]), meta[0])
    buf = torch.zeros((max(sizes), *shape), dtype=dtype, device=dist.comm)
    if len(t):
        buf[:len(t)] = t.to(dist.comm)
    outs = [torch.empty_like(buf) for _ in range(dist.world)]
    td.all_gather(outs, buf)
    return torch.cat([o[:s].to(t.device) for o, s in zip(outs, sizes, strict=True)])


def all_gather_tensor(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Same-shaped tensors of every rank stacked on a new first axis (W, ...), on t's device."""
    if not dist.on:
        return t[None]
    import torch.distributed as td

    buf = t.to(dist.comm)
    outs = [torch.empty_like(buf) for _ in range(dist.world)]
    td.all_gather(outs, buf)
    return torch.stack(outs).to(t.device)


def all_sum(values: list[float], dist: Dist) -> list[float]:
    """Sum a few numbers over ranks (float64)."""
    if not dist.on:
        return list(values)
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64, device=dist.comm)
    td.all_reduce(t)
    return t.cpu().tolist()


def map_rows(fn, n: int, dist: Dist, block: int) -> torch.Tensor:
    """fn(a, b) -> rows a..b of a result; each rank computes its shard, every rank gets all n rows."""
    if not dist.on:
        return fn(0, n)
    a, b = shard_range(n, dist, block)
    return gather_rows(fn(a, b), dist)


def barrier(dist: Dist) -> None:
    if dist.on:
        import torch.distributed as td

        td.barrier()


def gather_objects(obj, dist: Dist) -> list:
    if not dist.on:
        return [obj]
    import torch.distributed as td

    out = [None] * dist.world
    td.all_gather_object(out, obj)
    return out


# -------------------------------------------------------------------------------------- stages
@contextmanager
def stage(run, kind: str, dist: Dist, resumable: bool = False):
    """`run.stage` on rank 0; elsewhere a stand-in whose `dir` is the same temporary folder (to read a
    checkpoint) and whose `save_model` does nothing. Code inside guards its writes with `st.main`.
    After the stage all ranks meet, and the others re-read the manifest rank 0 extended."""
    from protocli.run import Stage

    if not dist.on:
        with run.stage(kind, resumable=resumable) as st:
            st.main = True
            yield st
        return
    if dist.is_main():
        with run.stage(kind, resumable=resumable) as st:
            st.main = True
            yield st
    else:
        sid = run.next_stage_id(kind)
        st = Stage(run, sid, kind, run.path / "stages" / f".{sid}.tmp")
        st.main = False
        st.save_model = lambda model: None
        yield st
    barrier(dist)
    if not dist.is_main():
        from protocli.files import read_json

        run.manifest = read_json(run.path / "manifest.json", "run manifest")
        st.dir = run.path / "stages" / st.id


# ------------------------------------------------------------------------------------- ending
def finish() -> None:
    """A command returned: wait for the others (a late failure elsewhere surfaces here), then part."""
    import torch.distributed as td

    if not td.is_initialized():
        return
    if current().on:
        td.barrier()
    td.destroy_process_group()
    _CURRENT[0] = SINGLE


def fail(code: int) -> tuple[int, str]:
    """This process failed with `code` -> (exit code for this process, what it prints: "own" its line,
    "quiet" nothing, "peer" a note that another process ended first).

    The first process to fail speaks for the job: it counts itself and records its code in the
    rendezvous store. A process failing after it (its collective broke because the first one left)
    takes that code and stays quiet. Under torchrun the store lives in torchrun's agent and outlives
    every worker; without the agent rank 0 serves it, and when rank 0 is the one that failed the
    others can only say that another process ended (exit 1)."""
    import datetime

    import torch.distributed as td

    if not td.is_initialized():  # failed before joining (e.g. a bad option): every rank fails alike
        return code, "own" if env_rank() == 0 else "quiet"
    try:
        store = td.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=10))
        if store.add(_FAILED, 1) == 1:
            store.set(_CODE, str(code))
            return code, "own"
        return int(store.get(_CODE)), "quiet"
    except Exception:  # the store went down with the process that served it
        return 1, "peer"


def exit_now(code: int) -> None:
    """Leave without tearing the process group down (a peer may be gone mid-collective)."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass
    os._exit(code)
