"""bench/gpu.sh, the one-command GPU check, starts every step: its --dry-run runs each at toy size on CPU
(about 20 s), so a GPU machine's only run is not the first time its code runs."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_bench_dry_run_starts_every_step():
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    for step in ("train resnet34", "autocast + channels_last", "cache", "push", "revision epoch", "torchrun",
                 "total wall time"):
        assert step in res.stdout, step
