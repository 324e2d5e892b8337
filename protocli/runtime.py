"""Device, randomness and mixed precision, chosen once at the edge -> passed into the stages."""

from __future__ import annotations

import contextlib
import os
import random

import torch

from protocli.errors import BadInput


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: CUDA is not available on this machine (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name}: not a device (auto, cpu, cuda, cuda:N)") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (for DataLoader workers and augmentation) and return a generator."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA where supported (fp16 otherwise); a no-op on CPU.

    CPU autocast (bf16) is slower than fp32 on most CPUs without AMX, so it stays off there.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@contextlib.contextmanager
def exact_fp32():
    """Plain fp32 on CUDA for the block: TF32 off for matmuls and cuDNN convolutions, restored after.

    For numbers that are cached and compared (the latent cache), not for training speed."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def default_workers() -> int:
    """DataLoader workers: leave one core for the main process, at most 8."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, n - 1))
