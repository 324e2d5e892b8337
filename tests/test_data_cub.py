"""CUB loader on tiny hand-made datasets: crop/mask alignment, image modes, index errors, ImageSet."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocli.data.cub import open_cub
from protocli.errors import BadInput

RED, GREY = (220, 20, 20), (60, 60, 60)


def write_cub(root: Path, entries: list[dict], classes=("001.a", "002.b"), masks: bool = True) -> Path:
    """entries: {cls (0-based), file, image (PIL), mask (PIL or None), box (x, y, w, h), train}."""
    rows = {"images": [], "labels": [], "split": [], "boxes": []}
    for i, e in enumerate(entries, 1):
        rel = f"{classes[e['cls']]}/{e['file']}"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        e["image"].save(root / "images" / rel)
        if masks and e.get("mask") is not None:
            mpath = (root / "segmentations" / rel).with_suffix(".png")
            mpath.parent.mkdir(parents=True, exist_ok=True)
            e["mask"].save(mpath)
        rows["images"].append(f"{i} {rel}")
        rows["labels"].append(f"{i} {e['cls'] + 1}")
        rows["split"].append(f"{i} {int(e.get('train', True))}")
        rows["boxes"].append(f"{i} " + " ".join(str(float(v)) for v in e["box"]))
    (root / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    for fname, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                       ("train_test_split.txt", "split"), ("bounding_boxes.txt", "boxes")):
        (root / fname).write_text("\n".join(rows[key]) + "\n")
    return root


def square_scene(w=100, h=90, rect=(30, 24, 54, 48)):
    """Grey image with a red rectangle (x0, y0, x1, y1 half-open) and its exact mask."""
    img = np.full((h, w, 3), GREY, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = rect
    img[y0:y1, x0:x1] = RED
    mask[y0:y1, x0:x1] = 255
    return Image.fromarray(img), Image.fromarray(mask)


@pytest.fixture
def scene_cub(tmp_path):
    img, mask = square_scene()
    # Box 22.7, 12.2 (+40, +60): ProtoPNet's int() crop -> x 22..62, y 12..72, so the rectangle
    # lands at x 8..32, y 12..36 of the 40 x 60 crop.
    entries = [dict(cls=0, file="a_1.png", image=img, mask=mask, box=(22.7, 12.2, 40.0, 60.0), train=True),
               dict(cls=1, file="b_1.png", image=img, mask=mask, box=(0, 0, 100, 90), train=False)]
    return open_cub(write_cub(tmp_path / "cub", entries))


def test_index_read(scene_cub):
    assert scene_cub.classes == ["001.a", "002.b"]
    assert [it.id for it in scene_cub.items] == [1, 2]
    assert [it.label for it in scene_cub.split("train")] == [0]
    assert [it.name for it in scene_cub.split("test")] == ["002.b/b_1.png"]
    assert scene_cub.items[0].box == (22.7, 12.2, 40.0, 60.0)
    assert scene_cub.has_masks
    assert len(scene_cub.fingerprint()) == 64


def test_crop_and_mask_pixel_exact(scene_cub):
    item = scene_cub.items[0]
    img, mask = np.asarray(scene_cub.image(item)), np.asarray(scene_cub.mask(item))
    assert img.shape == (60, 40, 3) and mask.shape == (60, 40)
    expected = np.zeros((60, 40), bool)
    expected[12:36, 8:32] = True
    assert np.array_equal(mask == 255, expected)
    assert set(np.unique(mask)) == {0, 255}
    assert (img[expected] == RED).all() and (img[~expected] == GREY).all()
    full = np.asarray(scene_cub.mask(item, crop=False))
    assert full.shape == (90, 100) and (full > 0).sum() == 24 * 24


def test_transforms_keep_alignment(scene_cub):
    from protocli.data.transforms import eval_transform, mask_transform

    item = scene_cub.items[0]
    x = eval_transform(20)(scene_cub.image(item))          # 40 x 60 crop -> 20 x 20: x / 2, y / 3
    m = mask_transform(20)(scene_cub.mask(item))
    assert x.shape == (3, 20, 20) and m.shape == (1, 20, 20)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    expected = np.zeros((20, 20), bool)
    expected[4:12, 4:16] = True
    assert np.array_equal(m[0].numpy() == 1, expected)
    # The image's "more red than grey" pixels are exactly the mask's pixels (symmetric filter).
    redness = (x[0] - x[1]).numpy()
    midpoint = ((RED[0] - RED[1]) + (GREY[0] - GREY[1])) / 2 / 255
    assert np.array_equal(redness > midpoint, expected)


def test_image_modes_become_rgb(tmp_path):
    base = np.zeros((20, 30, 3), np.uint8)
    base[:, :15] = (200, 40, 40)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 200, 10), 255
    rgba[:, :10, 3] = 0                                     # fully transparent: composited on white
    grey16 = Image.fromarray(np.full((20, 30), 65535, np.uint16))
    images = {"grey.png": Image.fromarray(base[..., 0]), "cmyk.jpg": Image.fromarray(base).convert("CMYK"),
              "rgba.png": Image.fromarray(rgba, "RGBA"), "pal.png": Image.fromarray(base).convert("P"),
              "la.png": Image.fromarray(base[..., 0]).convert("LA"), "g16.png": grey16}
    entries = [dict(cls=0, file=name, image=im, box=(0, 0, 30, 20)) for name, im in images.items()]
    cub = open_cub(write_cub(tmp_path, entries, masks=False))
    out = {it.name.split("/")[1]: cub.image(it) for it in cub.items}
    assert all(im.mode == "RGB" and im.size == (30, 20) for im in out.values())
    assert out["grey.png"].getpixel((0, 0)) == (200, 200, 200)
    assert out["rgba.png"].getpixel((0, 0)) == (255, 255, 255)
    assert out["rgba.png"].getpixel((20, 0)) == (10, 200, 10)
    assert out["g16.png"].getpixel((0, 0)) == (255, 255, 255)
    r, g, b = out["cmyk.jpg"].getpixel((2, 2))
    assert r > 150 and g < 90 and b < 90


def test_no_masks(tmp_path):
    img, _ = square_scene()
    entry = dict(cls=0, file="a.png", image=img, box=(0, 0, 10, 10))
    cub = open_cub(write_cub(tmp_path, [entry], masks=False))
    assert not cub.has_masks
    with pytest.raises(BadInput, match="no segmentation masks"):
        cub.mask(cub.items[0])


@pytest.mark.parametrize("fname, text, match", [
    ("images.txt", "1 001.a/a_1.png\n2\n", r"images\.txt line 2: expected '<id> <path>'"),
    ("image_class_labels.txt", "1 1\n2 3\n", r"image_class_labels\.txt line 2: label 3 is outside 1\.\.2"),
    ("train_test_split.txt", "1 1\n", r"split\.txt: no line for image id 2 \(images\.txt line 2\)"),
    ("bounding_boxes.txt", "1 0 0 5\n2 0 0 5 5\n", r"bounding_boxes\.txt line 1: expected"),
    ("bounding_boxes.txt", "1 0 0 5 5\n2 0 0 5 5\n3 0 0 5 5\n", r"line 3: image id 3 is not in images\.txt"),
    ("classes.txt", "1 001.a\n3 002.b\n", r"classes\.txt line 2: expected label 2, got 3"),
])
def test_index_faults_name_file_and_line(scene_cub, fname, text, match):
    (scene_cub.root / fname).write_text(text)
    with pytest.raises(BadInput, match=match) as err:
        open_cub(scene_cub.root)
    assert "\n" not in str(err.value) and "fault" in str(err.value)


def test_missing_and_broken_files_name_the_file(scene_cub, tmp_path):
    item = scene_cub.items[0]
    scene_cub.image_path(item).write_bytes(b"not a png")
    with pytest.raises(BadInput, match=r"a_1\.png: cannot decode image"):
        scene_cub.image(item)
    scene_cub.mask_path(item).unlink()
    with pytest.raises(BadInput, match=r"a_1\.png: segmentation mask not found"):
        scene_cub.mask(item)
    with pytest.raises(BadInput, match="dataset folder not found"):
        open_cub(tmp_path / "nowhere")


def test_mask_of_wrong_size(scene_cub):
    item = scene_cub.items[0]
    Image.new("L", (50, 50)).save(scene_cub.mask_path(item))
    with pytest.raises(BadInput, match="mask is 50x50 but its image is 100x90"):
        scene_cub.mask(item)


def test_fingerprint_follows_index(scene_cub):
    before = scene_cub.fingerprint()
    (scene_cub.root / "train_test_split.txt").write_text("1 0\n2 0\n")
    assert open_cub(scene_cub.root).fingerprint() != before


def test_image_set(scene_cub):
    from protocli.data.cub import ImageSet
    from protocli.data.transforms import eval_transform, train_transform

    ds = ImageSet(scene_cub, "train", eval_transform(16), masks=True)
    x, m, y, i = ds[0]
    assert x.shape == (3, 16, 16) and m.shape == (1, 16, 16) and y == 0 and i == 0 and len(ds) == 1
    x, y, i = ImageSet(scene_cub, "test", eval_transform(16), crop=False)[0]
    assert x.shape == (3, 16, 16) and y == 1
    with pytest.raises(ValueError, match="deterministic"):
        ImageSet(scene_cub, "train", train_transform(16), masks=True)
    clone = pickle.loads(pickle.dumps(ds))                   # DataLoader workers under spawn
    assert type(clone).__name__ == "ImageSet" and clone[0][0].shape == (3, 16, 16)


def test_reading_datasets_does_not_import_torch():
    code = "import sys, protocli.data.cub, protocli.data.check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
