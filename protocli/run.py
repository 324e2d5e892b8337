"""Run directory: manifest, stages and weights -> the state every command reads and extends.

A run is a folder (see docs/ARCHITECTURE.md). Stages write into a temporary folder
`stages/.NNN-KIND.tmp`; only when the stage finished is the folder renamed, the run's
`model.safetensors` replaced and the manifest updated, so a failed or killed stage leaves the run
as it was. Weights are safetensors with the model config in the metadata: loading never unpickles.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocli import __version__
from protocli.errors import BadInput
from protocli.files import atomic_write_bytes, atomic_write_json, read_json

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def save_weights(model, path: Path) -> None:
    """Atomically write a model's state dict and config to a safetensors file."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
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
    if "config" not in meta:
        raise BadInput("no model config in the safetensors metadata (not written by protocli?)", path)
    cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    model = build_model(cfg)
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
            raise BadInput("a run already exists here (use --resume to continue it, or another --run)", path)
        if path.exists() and any(path.iterdir()):
            raise BadInput("folder exists and is not empty; choose a new --run folder", path)
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
        manifest = read_json(path / MANIFEST, "run manifest")
        if not isinstance(manifest, dict) or manifest.get("version") != 1 or "stages" not in manifest:
            raise BadInput("not a protocli run manifest (version 1)", path / MANIFEST)
        return cls(path, manifest)

    def write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def fork(self, out) -> Run:
        """Copy this run to `out` (hard-linking the latent cache, which is read-only)."""
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise BadInput("--out folder exists and is not empty", out)
        tmp = out.with_name(f".{out.name}.fork.tmp")
        shutil.rmtree(tmp, ignore_errors=True)

        def copy(src, dst):
            try:
                os.link(src, dst) if "/cache/" in str(src) else shutil.copy2(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(self.path, tmp, copy_function=copy,
                        ignore=shutil.ignore_patterns(".*.tmp"))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        forked = Run.open(out)
        forked.manifest.setdefault("forked_from", []).append({"run": str(self.path.resolve()), "at": now_iso()})
        forked.write_manifest()
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
        return self.path / WEIGHTS

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
        root = self.path / "stages"
        if not root.is_dir():
            return []
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [p for p in dirs if kind is None or p.name.split("-", 1)[1] == kind]

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
        n = len(self.stage_dirs()) + 1
        return f"{n:03d}-{kind}"

    @contextmanager
    def stage(self, kind: str, resumable: bool = False):
        """Run a stage atomically: commit on success, leave the run untouched on failure.

        A `resumable` stage (training) keeps its temporary folder when it fails or is interrupted,
        so that `--resume` can pick up its checkpoint; the run's committed state is unchanged.
        """
        sid = self.next_stage_id(kind)
        tmp = self.path / "stages" / f".{sid}.tmp"
        if not resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        st = Stage(self, sid, kind, tmp)
        try:
            yield st
        except BaseException:
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.path / "stages" / sid
        os.replace(tmp, final)
        st.dir = final
        if st.saved_model:
            # Link-or-copy the stage weights into place atomically.
            shutil.copy2(final / WEIGHTS, self.path / f".{WEIGHTS}.tmp")
            os.replace(self.path / f".{WEIGHTS}.tmp", self.weights_path)
        self.manifest["stages"].append({"id": sid, "kind": kind, "at": now_iso(), **st.info})
        self.write_manifest()

    def stage_log(self, kind: str | None = None) -> list[dict]:
        return [s for s in self.manifest["stages"] if kind is None or s["kind"] == kind]
