"""Run directory: manifest, stages and weights -> the state every command reads and extends.

A run is a folder (see docs/ARCHITECTURE.md and docs/integrity.md). The manifest's stage list is
the one source of truth: a stage is built in `stages/.NNN-KIND.tmp`, and committed by
  1. one sync of everything written in it (files inside a stage are not synced one by one),
  2. renaming it to `stages/NNN-KIND`,
  3. one atomic replace of manifest.json that appends it to the stage list  <- the commit point.
A process killed before step 3 leaves a folder the manifest does not list: readers ignore it and
the next writer removes it; after step 3 the stage is there. So the run is always exactly as
before or as after. The run's current weights are those of the newest listed stage that saved a
model; RUN/model.safetensors is a hard link to them for your own scripts, refreshed after each
commit (protocli itself goes by the manifest). Writers hold the run lock (protocli.lock).
Weights are safetensors with the model config in the metadata: loading never unpickles.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocli import __version__, lock
from protocli.errors import BadInput
from protocli.files import atomic_write_bytes, atomic_write_json, deferred, now_iso, sync_tree
from protocli.runfiles import MANIFEST, STAGE_ID, WEIGHTS, current_weights, model_config, read_manifest

# Stages committed by this process, newest last: (run folder, stage id). The CLI reads it to say
# what an interrupted command had already committed.
COMMITTED: list[tuple[str, str]] = []


def save_weights(model, path: Path) -> None:
    """Atomically write a model's state dict and config to a safetensors file."""
    from safetensors.torch import save

    from protocli.model import export_state

    state = export_state(model)
    meta = {"config": json.dumps(model.cfg.to_dict()), "protocli": __version__}
    atomic_write_bytes(path, save(state, metadata=meta))


def load_weights(path: Path, device="cpu"):
    """Build a ProtoPNet from a safetensors file written by `save_weights`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from protocli.model import ModelConfig, build_model

    path = Path(path)
    if not path.exists():
        raise BadInput("weights file not found", path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise BadInput(f"not a readable safetensors file ({e})", path) from None
    try:
        cfg = ModelConfig.from_dict(model_config(meta, path))
    except BadInput as e:
        raise BadInput(str(e).removeprefix(f"{path}: "), path) from None
    except (TypeError, ValueError) as e:  # a field of the wrong type
        raise BadInput(f"metadata 'config' does not fit this protocli's model config ({e})", path) from None
    try:
        model = build_model(cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise BadInput(f"metadata 'config' describes no buildable model ({type(e).__name__}: {e})", path) from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (shaped, "wrongly shaped")):
        if keys:
            # e.g. a run trained by an older protocli whose backbone had other layers
            raise BadInput(f"weights do not fit the {cfg.backbone} model of its config: {what} key {keys[0]!r} "
                           f"({len(keys)} {what})", path)
    model.load_state_dict(state, strict=True)
    return model.to(device)


@dataclass
class Stage:
    """A stage in progress: write into `dir`; `info` ends up in the manifest's stage log."""

    run: Run
    id: str
    kind: str
    dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    saved_model: bool = False

    def save_model(self, model) -> None:
        save_weights(model, self.dir / WEIGHTS)
        self.saved_model = True


def _is_empty(path: Path) -> bool:
    """No entries but possibly the lock file (the CLI locks a new run folder before creating it)."""
    return not path.exists() or all(p.name == lock.LOCK for p in path.iterdir())


class Run:
    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def create(cls, path, *, data_root, crop: bool, fingerprint: str, model_cfg: dict,
               train_cfg: dict, seed: int, device: str) -> Run:
        import torch

        path = Path(path)
        if (path / MANIFEST).exists():
            raise BadInput("a run already exists here (use --resume to continue it, or another run folder)", path)
        if not _is_empty(path):
            raise BadInput("folder exists and is not empty; choose a new run folder", path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "version": 1,
            "created": now_iso(),
            "protocli": __version__,
            "torch": torch.__version__,
            "seed": seed,
            "device": device,
            "data": {"root": str(Path(data_root).resolve()), "fingerprint": fingerprint, "crop": crop},
            "model": model_cfg,
            "train": train_cfg,
            "stages": [],
        }
        run = cls(path, manifest)
        run.write_manifest()
        return run

    @classmethod
    def open(cls, path) -> Run:
        path = Path(path)
        if not path.is_dir():
            raise BadInput("run folder not found", path)
        return cls(path, read_manifest(path))

    def write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def fork(self, out) -> Run:
        """Copy this run to `out` and lock the copy for this process (the cache is hard-linked: read-only).

        Copies what the manifest lists, read once first, so a commit in the source during the copy
        cannot give the fork a stage list that disagrees with its folders.
        """
        out = Path(out)
        if not _is_empty(out):
            raise BadInput("--out folder exists and is not empty", out)
        manifest = read_manifest(self.path)
        listed = {s["id"] for s in manifest["stages"]}
        tmp = out.with_name(f".{out.name}.fork.tmp")
        shutil.rmtree(tmp, ignore_errors=True)

        def copy(src, dst):
            try:
                os.link(src, dst) if "/cache/" in str(src) else shutil.copy2(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        def skip(folder, names):
            if Path(folder) == self.path:
                return [n for n in names if n in (MANIFEST, WEIGHTS, lock.LOCK) or n.endswith(".tmp")]
            if Path(folder) == self.path / "stages":
                return [n for n in names if n not in listed]
            return [n for n in names if n.startswith(".") and n.endswith(".tmp")]

        shutil.copytree(self.path, tmp, copy_function=copy, ignore=skip)
        manifest.setdefault("forked_from", []).append({"run": str(self.path.resolve()), "at": now_iso()})
        atomic_write_json(tmp / MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        lock.acquire(out)  # a long `rounds --out` must not share its fork with another writer
        forked = Run(out, manifest)
        forked._link_current()
        return forked

    # -- data and model -----------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return Path(self.manifest["data"]["root"])

    @property
    def crop(self) -> bool:
        return bool(self.manifest["data"].get("crop", True))

    def cub(self):
        from protocli.data.cub import open_cub

        cub = open_cub(self.data_root)
        want = self.manifest["data"].get("fingerprint")
        if want and cub.fingerprint() != want:
            raise BadInput("dataset changed since this run was trained (fingerprint differs)", self.data_root)
        return cub

    @property
    def weights_path(self) -> Path:
        """The current weights: the newest committed stage's model.safetensors (by the manifest)."""
        return current_weights(self.path, self.manifest)

    def load_model(self, device="cpu"):
        return load_weights(self.weights_path, device)

    @property
    def antitypes_path(self) -> Path:
        return self.path / "antitypes.json"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    # -- stages -------------------------------------------------------------------------
    def stage_dirs(self, kind: str | None = None) -> list[Path]:
        """Folders of the committed stages (those the manifest lists), oldest first."""
        return [self.path / "stages" / s["id"] for s in self.stage_log(kind)]

    def pushes(self) -> list[str]:
        return [p.name for p in self.stage_dirs("push")]

    def latest_push(self) -> Path | None:
        dirs = self.stage_dirs("push")
        return dirs[-1] if dirs else None

    def require_push(self) -> Path:
        push = self.latest_push()
        if push is None:
            raise BadInput("this run has no push yet; run `protocli push RUN` first", self.path)
        return push

    def next_stage_id(self, kind: str) -> str:
        stages = self.manifest["stages"]
        n = int(STAGE_ID.fullmatch(stages[-1]["id"]).group(1)) if stages else 0
        return f"{n + 1:03d}-{kind}"

    def recover(self, keep: str | None = None) -> list[str]:
        """Remove what a killed writer left (folders under stages/ the manifest does not list, except
        `keep`) and point RUN/model.safetensors at the current weights. Call with the lock held."""
        root = self.path / "stages"
        listed = {s["id"] for s in self.manifest["stages"]}
        removed = []
        for p in self.path.glob(".*.tmp"):  # temporaries of atomic writes into the run folder
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p.name)
        if root.is_dir():
            for p in root.iterdir():
                if p.name not in listed and p.name != keep:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    removed.append(p.name)
        self._link_current()
        return removed

    def _link_current(self) -> None:
        src, dst = self.weights_path, self.path / WEIGHTS
        if src == dst or not src.exists() or (dst.exists() and os.path.samefile(src, dst)):
            return  # (renaming a hard link over its twin would do nothing and leave the temporary)
        tmp = self.path / f".{WEIGHTS}.{secrets.token_hex(4)}.tmp"
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)

    @contextmanager
    def stage(self, kind: str, resumable: bool = False):
        """Run a stage atomically: commit on success, leave the run untouched on failure.

        Holds the run lock (re-entrant: the CLI usually holds it already). A `resumable` stage
        (training) keeps its temporary folder when it fails or is interrupted, so that `--resume`
        can pick up its checkpoint; the run's committed state is unchanged.
        """
        with lock.hold(self.path):
            self.manifest = read_manifest(self.path)  # another writer may have committed since we opened
            sid = self.next_stage_id(kind)
            name = f".{sid}.tmp"
            self.recover(keep=name if resumable else None)
            tmp = self.path / "stages" / name
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
            st = Stage(self, sid, kind, tmp)
            try:
                with deferred(tmp):
                    yield st
            except BaseException:
                if not resumable:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._commit(st)

    def _commit(self, st: Stage) -> None:
        final = self.path / "stages" / st.id
        sync_tree(st.dir)  # 1. every file of the stage on disk, with one call however many there are
        os.replace(st.dir, final)  # 2. still not part of the run: the manifest does not list it
        st.dir = final
        record = {"id": st.id, "kind": st.kind, "at": now_iso(), **st.info, "weights": st.saved_model}
        manifest = {**self.manifest, "stages": [*self.manifest["stages"], record]}
        atomic_write_json(self.path / MANIFEST, manifest)  # 3. the commit: one atomic replace, synced
        self.manifest = manifest
        COMMITTED.append((str(self.path), st.id))
        self._link_current()

    def stage_log(self, kind: str | None = None) -> list[dict]:
        return [s for s in self.manifest["stages"] if kind is None or s["kind"] == kind]
