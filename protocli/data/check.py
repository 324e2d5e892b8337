"""`protocli data check`: a dataset folder -> summary dict, or BadInput naming the first fault.

Checks, collecting every fault before reporting:
- the index files (via `cub.read_index`): each line well formed, ids unique and the same in
  images.txt, image_class_labels.txt, train_test_split.txt and bounding_boxes.txt, labels within
  classes.txt, split values 0 or 1, boxes with positive size;
- every listed image exists and decodes completely (PIL `load()`, so truncated files are caught);
- every box lies inside its image (1 px of slack for float boxes rounded up by annotation tools)
  and still covers pixels after ProtoPNet's integer crop;
- when segmentations/ exists: every image has a mask that decodes and has the image's size.
The error is one line: the first fault (file and line, in images.txt order) and the total count.
Decoding runs on a thread pool (PIL releases the GIL while decoding), with a progress bar on stderr.
No torch import here.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from protocli.console import progress_bar
from protocli.data.cub import Item, crop_box, faults_message, read_index
from protocli.errors import BadInput

SLACK = 1.0  # px a box may overhang the image (CUB's float boxes; the crop clips it anyway)


def _decode(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(size, None) when the file decodes completely, else (None, what is wrong)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size, None
    except FileNotFoundError:
        return None, "file not found"
    except UnidentifiedImageError:
        return None, "not an image file PIL can read"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on broken files
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"cannot decode ({text})"


def _check_item(root: Path, item: Item, line: int, masks: bool) -> list[str]:
    faults = []
    rel = Path("images") / item.name
    size, fault = _decode(root / rel)
    if fault:
        faults.append(f"{root / rel}: image {fault} (images.txt line {line})")
    else:
        x, y, w, h = item.box
        x0, y0, x1, y1 = crop_box(item.box, size)
        overhang = x < -SLACK or y < -SLACK or x + w > size[0] + SLACK or y + h > size[1] + SLACK
        if overhang or x1 <= x0 or y1 <= y0:
            faults.append(f"{root / 'bounding_boxes.txt'}: box {x:g} {y:g} {w:g} {h:g} of image id {item.id} "
                          f"lies outside its {size[0]}x{size[1]} image {rel}")
    if masks:
        mrel = (Path("segmentations") / item.name).with_suffix(".png")
        msize, mfault = _decode(root / mrel)
        if mfault:
            faults.append(f"{root / mrel}: segmentation mask {mfault} (for {rel})")
        elif size and msize != size:
            faults.append(f"{root / mrel}: mask is {msize[0]}x{msize[1]} "
                          f"but its image is {size[0]}x{size[1]}")
    return faults


def check(root: Path, workers: int | None = None) -> dict:
    """Check a CUB-layout dataset; returns {root, classes, images, train, test, masks, faults: 0, seconds}."""
    start = time.perf_counter()
    root = Path(root)
    idx = read_index(root)
    faults = list(idx.faults)
    masks = (root / "segmentations").is_dir()
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            progress_bar("checking images and masks" if masks else "checking images", len(idx.items)) as advance:
        found = pool.map(lambda it: _check_item(root, it, idx.lines[it.id], masks), idx.items)
        for item_faults in found:  # map keeps images.txt order, so "first fault" is deterministic
            faults.extend(item_faults)
            advance()
    if not idx.items and not faults:
        faults.append(f"{root / 'images.txt'}: lists no images")
    if faults:
        raise BadInput(faults_message(faults))
    train = sum(it.train for it in idx.items)
    return {"root": str(root.resolve()), "classes": len(idx.classes), "images": len(idx.items),
            "train": train, "test": len(idx.items) - train, "masks": masks, "faults": 0,
            "seconds": round(time.perf_counter() - start, 3)}
