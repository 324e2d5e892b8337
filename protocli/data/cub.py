"""CUB-200-2011 layout (also what `data synth` writes) -> `Cub` index, RGB crops, binary masks.

Input: a folder with images.txt, image_class_labels.txt, train_test_split.txt, bounding_boxes.txt,
classes.txt, images/ and optionally segmentations/ (one grey PNG per image, same relative name with
a .png suffix; object where the grey value is >= 128). Output: `open_cub(root)` -> `Cub`, whose
`image()` / `mask()` give PIL images cropped to the bounding box, and `ImageSet`, the torch Dataset
over one split.

`ImageSet` subclasses `torch.utils.data.Dataset`, but torch is imported only when the name
`ImageSet` is first looked up (module `__getattr__`, PEP 562): `protocli data check` and the CLI's
start-up read datasets through this module and must not pay for importing torch.

Image modes: greyscale, palette, CMYK and 16-bit images are converted to RGB; images with an alpha
channel are composited on white (what an image viewer shows for a transparent cut-out, and neutral
for a bird photo). Boxes are used as ProtoPNet's crop script does: `int()` of x, y, x + w, y + h,
clipped to the image. EXIF orientation is ignored on purpose: CUB's boxes refer to stored pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from protocli.errors import BadInput

INDEX_FILES = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt",
               "bounding_boxes.txt")
_BINARY_LUT = [0] * 128 + [255] * 128  # grey -> {0, 255}: object where >= 128
_FAULTS_SHOWN = "{first}; {n} fault{s} in total"


@dataclass(frozen=True)
class Item:
    id: int                                   # CUB image id (images.txt)
    name: str                                 # path relative to images/
    label: int                                # 0-based class index
    train: bool                               # train_test_split.txt: 1 = train
    box: tuple[float, float, float, float]    # x, y, w, h from bounding_boxes.txt


@dataclass
class Index:
    """What the five index files say, plus every fault found in them (file and line named)."""

    classes: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    lines: dict[int, int] = field(default_factory=dict)   # image id -> line in images.txt
    faults: list[str] = field(default_factory=list)


def faults_message(faults: list[str]) -> str:
    """One line: the first fault and how many there are (the CLI prints one line per error)."""
    return _FAULTS_SHOWN.format(first=faults[0], n=len(faults), s="" if len(faults) == 1 else "s")


def _rows(path: Path, usage: str, faults: list[str]) -> list[tuple[int, list[str]]]:
    """(line number, [first field, rest of line]) of each non-blank line; one-field lines are faults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput("file not found (not a CUB-200-2011 style dataset?)", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read: {e}", path) from None
    rows = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            faults.append(f"{path} line {no}: expected '{usage}'")
        else:
            rows.append((no, parts))
    return rows


class _Bad(ValueError):
    """A value fault whose message is worth showing (int()/float() messages are not)."""


def _per_id(root: Path, fname: str, usage: str, parse, ids: dict[int, int],
            faults: list[str]) -> dict[int, object]:
    """Parse a '<id> ...' file into {id: value}; unknown, repeated and missing ids are faults."""
    path = root / fname
    out: dict[int, object] = {}
    seen: set[int] = set()
    for no, (key_text, rest) in _rows(path, usage, faults):
        key = int(key_text) if key_text.isdigit() else None
        if key is None or key in seen or key not in ids:
            why = ("expected '" + usage + "'" if key is None else
                   f"image id {key} appears twice" if key in seen else f"image id {key} is not in images.txt")
            faults.append(f"{path} line {no}: {why}")
            continue
        seen.add(key)  # a bad value on this line is its fault; the id is not "missing" as well
        try:
            out[key] = parse(rest)
        except _Bad as e:
            faults.append(f"{path} line {no}: {e}")
        except ValueError:
            faults.append(f"{path} line {no}: expected '{usage}'")
    for key, no in ids.items():
        if key not in seen:
            faults.append(f"{path}: no line for image id {key} (images.txt line {no})")
    return out


def _split_value(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise _Bad(f"split must be 1 (train) or 0 (test), got {text.strip()!r}")
    return text.strip() == "1"


def _box_value(text: str) -> tuple[float, float, float, float]:
    values = text.split()
    if len(values) != 4:
        raise ValueError
    x, y, w, h = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise _Bad(f"box {text.strip()!r} needs finite numbers and positive width and height")
    return x, y, w, h


def read_index(root: Path) -> Index:
    """Read the index files, collecting every fault instead of stopping at the first.

    A missing index file is fatal (BadInput at once); everything else lands in `Index.faults` in
    file order, and only ids that every file agrees on become items.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput("dataset folder not found", root)
    idx = Index()
    f = idx.faults
    for no, (label, name) in _rows(root / "classes.txt", "<label> <name>", f):
        if label != str(len(idx.classes) + 1):
            f.append(f"{root / 'classes.txt'} line {no}: expected label {len(idx.classes) + 1}, got {label}")
        idx.classes.append(name.strip())
    names: dict[int, str] = {}
    for no, (key, name) in _rows(root / "images.txt", "<id> <path>", f):
        if not key.isdigit():
            f.append(f"{root / 'images.txt'} line {no}: expected '<id> <path>'")
        elif int(key) in names:
            f.append(f"{root / 'images.txt'} line {no}: image id {key} appears twice")
        else:
            names[int(key)] = name.strip()
            idx.lines[int(key)] = no
    k = len(idx.classes)

    def label_value(text: str) -> int:
        label = int(text)
        if not 1 <= label <= k:
            raise _Bad(f"label {label} is outside 1..{k} (classes.txt has {k} classes)")
        return label - 1

    labels = _per_id(root, "image_class_labels.txt", "<id> <label>", label_value, idx.lines, f)
    split = _per_id(root, "train_test_split.txt", "<id> <1|0>", _split_value, idx.lines, f)
    boxes = _per_id(root, "bounding_boxes.txt", "<id> <x> <y> <w> <h>", _box_value, idx.lines, f)
    for key, name in names.items():
        if key in labels and key in split and key in boxes:
            idx.items.append(Item(key, name, labels[key], split[key], boxes[key]))
    return idx


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; alpha is composited on white, 16-bit grey is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        img = img.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def crop_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """ProtoPNet's integer crop (int of x, y, x+w, y+h), clipped to the image like numpy slicing."""
    x, y, w, h = box
    return (max(0, int(x)), max(0, int(y)), min(size[0], int(x + w)), min(size[1], int(y + h)))


def _load(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise BadInput(f"{what} not found", path) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise BadInput(f"cannot decode {what} ({type(e).__name__}: {e})", path) from None


class Cub:
    """A dataset in CUB-200-2011 layout. Build it with `open_cub(root)`."""

    def __init__(self, root: Path, classes: list[str], items: list[Item]):
        self.root = Path(root)
        self.classes = classes
        self.items = items
        self.has_masks = (self.root / "segmentations").is_dir()

    def __repr__(self) -> str:
        return f"Cub({str(self.root)!r}, {len(self.classes)} classes, {len(self.items)} images)"

    def split(self, which: str) -> list[Item]:
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {which!r}")
        want = which == "train"
        return [it for it in self.items if it.train == want]

    def image_path(self, item: Item) -> Path:
        return self.root / "images" / item.name

    def mask_path(self, item: Item) -> Path:
        return (self.root / "segmentations" / item.name).with_suffix(".png")

    def _crop(self, img: Image.Image, item: Item) -> Image.Image:
        box = crop_box(item.box, img.size)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise BadInput(f"box of image id {item.id} {item.box} lies outside the {img.width}x{img.height} "
                           "image", self.root / "bounding_boxes.txt")
        return img.crop(box)

    def image(self, item: Item, crop: bool = True) -> Image.Image:
        """The RGB image, cropped to its bounding box unless crop=False."""
        img = to_rgb(_load(self.image_path(item), "image"))
        return self._crop(img, item) if crop else img

    def require_masks(self) -> None:
        if not self.has_masks:
            raise BadInput("no segmentation masks in this dataset; stages that need masks (overlap, the box "
                           "criterion, masked evaluation) need a segmentations/ folder", self.root)

    def mask(self, item: Item, crop: bool = True) -> Image.Image:
        """The object mask as mode "L" with values 0 / 255, cropped exactly like `image()`."""
        self.require_masks()
        m = _load(self.mask_path(item), "segmentation mask").convert("L").point(_BINARY_LUT)
        with Image.open(self.image_path(item)) as im:  # header only: cheap, and catches misalignment
            size = im.size
        if m.size != size:
            raise BadInput(f"mask is {m.width}x{m.height} but its image is {size[0]}x{size[1]}",
                           self.mask_path(item))
        return self._crop(m, item) if crop else m

    def fingerprint(self) -> str:
        """sha256 over the index files: changes when the list, labels, split or boxes change."""
        h = hashlib.sha256()
        for name in INDEX_FILES:
            data = (self.root / name).read_bytes()
            h.update(f"{name}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()


def open_cub(root: str | Path) -> Cub:
    """Read a dataset's index; any fault in the index files is BadInput (first fault + count).

    Image files are not opened here (that is `protocli data check`); `image()` and `mask()` raise
    BadInput naming the file when one is missing or broken.
    """
    root = Path(root)
    idx = read_index(root)
    if idx.faults:
        raise BadInput(faults_message(idx.faults))
    if not idx.items:
        raise BadInput("images.txt lists no images", root / "images.txt")
    return Cub(root, idx.classes, idx.items)


def _make_image_set():
    """Define ImageSet on first use, so that importing this module does not import torch."""
    import torch.utils.data

    from protocli.data.transforms import mask_transform

    class ImageSet(torch.utils.data.Dataset):
        """One split of a Cub as (image, label, index) or (image, mask, label, index) tuples.

        `transform` maps an RGB PIL image to a (3, S, S) tensor. With masks=True the mask goes
        through `mask_transform(transform.size)`, so `transform` must be a non-augmenting one
        (eval_transform): a random rotation of the image would not be applied to the mask.
        """

        def __init__(self, cub: Cub, split: str, transform, crop: bool = True, masks: bool = False):
            self.cub, self.split, self.transform, self.crop, self.masks = cub, split, transform, crop, masks
            self.items: list[Item] = cub.split(split)
            self.mask_transform = None
            if masks:
                if getattr(transform, "augments", False):
                    raise ValueError("masks=True needs a deterministic transform (eval_transform)")
                cub.require_masks()
                self.mask_transform = mask_transform(transform.size)

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int):
            item = self.items[i]
            img = self.transform(self.cub.image(item, crop=self.crop))
            if not self.masks:
                return img, item.label, i
            return img, self.mask_transform(self.cub.mask(item, crop=self.crop)), item.label, i

    # Pickle (DataLoader workers under spawn) finds the class as protocli.data.cub.ImageSet.
    ImageSet.__module__, ImageSet.__qualname__ = __name__, "ImageSet"
    return ImageSet


_lazy: dict[str, type] = {}


def __getattr__(name: str):
    if name == "ImageSet":
        if name not in _lazy:
            _lazy[name] = _make_image_set()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
