"""`data check`: passes on a clean synth dataset; each kind of fault is BadInput naming file/line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from protocli.data.check import check
from protocli.data.synth import synth
from protocli.errors import BadInput


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("check") / "birds"
    synth(out, classes=4, train_per_class=2, test_per_class=1, size=40, seed=0)
    return out


@pytest.fixture
def data(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "birds"))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def image_of(root: Path, n: int) -> str:
    return lines(root / "images.txt")[n - 1].split()[1]


def fails(root: Path) -> str:
    with pytest.raises(BadInput) as err:
        check(root)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_clean_dataset_passes(data):
    summary = check(data)
    assert summary["faults"] == 0 and summary["masks"] is True
    assert (summary["classes"], summary["images"], summary["train"], summary["test"]) == (4, 12, 8, 4)


def test_truncated_image(data):
    rel = image_of(data, 5)
    path = data / "images" / rel
    path.write_bytes(path.read_bytes()[:200])
    message = fails(data)
    assert f"images/{rel}: image cannot decode" in message and "images.txt line 5" in message
    assert message.endswith("; 1 fault in total")


def test_missing_image_and_missing_mask_are_both_counted(data):
    (data / "images" / image_of(data, 2)).unlink()
    (data / "segmentations" / image_of(data, 7)).unlink()
    message = fails(data)
    assert f"images/{image_of(data, 2)}: image file not found (images.txt line 2)" in message
    assert message.endswith("; 2 faults in total")


def test_missing_mask(data):
    (data / "segmentations" / image_of(data, 3)).unlink()
    assert f"segmentations/{image_of(data, 3)}: segmentation mask file not found" in fails(data)


def test_mask_of_other_size(data):
    Image.new("L", (10, 10)).save(data / "segmentations" / image_of(data, 4))
    assert "mask is 10x10 but its image is 40x40" in fails(data)


def test_id_missing_from_one_file(data):
    split = data / "train_test_split.txt"
    split.write_text("\n".join(ln for ln in lines(split) if not ln.startswith("6 ")) + "\n")
    message = fails(data)
    assert "train_test_split.txt: no line for image id 6 (images.txt line 6)" in message


def test_label_out_of_range(data):
    labels = data / "image_class_labels.txt"
    rows = lines(labels)
    rows[8] = "9 7"
    labels.write_text("\n".join(rows) + "\n")
    assert "image_class_labels.txt line 9: label 7 is outside 1..4" in fails(data)


def test_bad_split_value_and_box_outside(data):
    split = data / "train_test_split.txt"
    split.write_text(split.read_text().replace("1 1\n", "1 2\n", 1))
    boxes = data / "bounding_boxes.txt"
    rows = lines(boxes)
    rows[2] = "3 30.0 30.0 20.0 20.0"
    boxes.write_text("\n".join(rows) + "\n")
    message = fails(data)
    assert "train_test_split.txt line 1: split must be 1 (train) or 0 (test)" in message
    assert message.endswith("; 2 faults in total")
    with pytest.raises(BadInput, match="box 30 30 20 20 of image id 3 lies outside its 40x40 image"):
        split.write_text(split.read_text().replace("1 2\n", "1 1\n", 1))
        check(data)


def test_not_a_dataset(tmp_path):
    with pytest.raises(BadInput, match="images.txt: file not found|classes.txt: file not found"):
        check(tmp_path)
