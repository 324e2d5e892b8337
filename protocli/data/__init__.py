"""Datasets: CUB-200-2011 layout reader, transforms, `data synth` and `data check`.

`from protocli.data import open_cub` costs PIL only; `ImageSet` (a torch Dataset) and the
transforms import torch when first used, so the CLI's `data check` stays quick to start.
"""

from protocli.data.cub import Cub, Item, open_cub

__all__ = ["Cub", "ImageSet", "Item", "open_cub"]


def __getattr__(name: str):
    if name == "ImageSet":
        from protocli.data import cub

        return cub.ImageSet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
