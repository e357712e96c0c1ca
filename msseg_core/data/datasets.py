"""Readers for CamVid (both public layouts), Cityscapes and KITTI Road, all in one label space per dataset.

Every dataset yields `(image, mask)`: `image` uint8 HxWx3 RGB, `mask` uint8 HxW holding class ids
0..C-1 of its `ClassSet` and `IGNORE_INDEX` (255) for void / unlabelled pixels. A `transform(image, mask)`
given at construction is applied to that pair (see `msseg_core.data.transforms`).

Bad data fails early and by name: a pair file that is missing is reported when the dataset is built; a file
that cannot be decoded, a label whose size differs from its image, or a label value that is no class and
not the void value raises `DatasetError` (a ValueError) naming the file, from `load(i)` / `__getitem__`,
instead of an anonymous stack trace deep inside a DataLoader worker.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from msseg_core.classes import CAMVID, CITYSCAPES, IGNORE_INDEX, KITTI_ROAD, ClassSet
from msseg_core.splits import SplitError, SplitPart, format_split, parse_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
Transform = Callable[[np.ndarray, np.ndarray], Any]


class DatasetError(ValueError):
    """Data on disk that cannot be used as is: the message names the offending file(s)."""


# --------------------------------------------------------------------------------------------------------
# Helpers


def natural_key(text: str) -> list:
    """Sort key putting 'f2' before 'f10': digit runs compare as numbers, so names sort in frame order."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _decode(path: Path, flags: int) -> np.ndarray:
    """Decode one file with OpenCV, telling 'cannot read' from 'not a valid image' (cv2.imread says neither)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if arr is None or arr.size == 0:
        raise DatasetError(f"{path}: cannot decode image (corrupt, truncated or not an image; {len(data)} bytes)")
    return arr


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB (grey images are expanded, 16-bit ones reduced to 8 bits)."""
    bgr = _decode(path, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_index_label(path: Path) -> np.ndarray:
    """A single-channel 8-bit index label as uint8 HxW, unchanged (no palette or colour conversion)."""
    raw = _decode(path, cv2.IMREAD_UNCHANGED)
    if raw.ndim == 3:
        if raw.shape[2] >= 3 and np.array_equal(raw[:, :, 0], raw[:, :, 1]) \
                and np.array_equal(raw[:, :, 0], raw[:, :, 2]):
            raw = raw[:, :, 0]  # grey stored as RGB
        else:
            raise DatasetError(f"{path}: expected a single-channel index label, got {raw.shape[2]} channels "
                               "that differ (a colour or palette PNG?)")
    if raw.dtype != np.uint8:
        raise DatasetError(f"{path}: expected an 8-bit index label, got {raw.dtype}")
    return raw


def _index_lut(mapping: dict[int, int], valid: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """256-entry lookup table raw value -> class id (255 elsewhere) and the table of accepted raw values."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for raw, cls in mapping.items():
        lut[raw] = cls
    ok = np.zeros(256, bool)
    ok[list(valid)] = True
    return lut, ok


def map_index_label(raw: np.ndarray, lut: np.ndarray, ok: np.ndarray, path: Path, accepted: str) -> np.ndarray:
    """Apply a raw -> class lookup table, refusing values the dataset does not define."""
    bad = ~ok[raw]
    if bad.any():
        values = np.unique(raw[bad])
        shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
        raise DatasetError(f"{path}: label values {{{shown}}} in {int(bad.sum())} pixels are outside {accepted}")
    return lut[raw]


def rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW int32 0xRRGGBB, so a colour table is a 1-D sorted lookup."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def map_colours(rgb: np.ndarray, colours: dict[tuple[int, int, int], int]) -> np.ndarray:
    """Colour-coded label (RGB) -> class ids; colours not in `colours` become IGNORE_INDEX."""
    table = sorted(((r << 16) | (g << 8) | b, cls) for (r, g, b), cls in colours.items())
    keys = np.array([k for k, _ in table], np.int32)
    vals = np.array([v for _, v in table] + [IGNORE_INDEX], np.uint8)
    codes = rgb_codes(rgb)
    idx = np.searchsorted(keys, codes)
    idx[idx == len(keys)] = 0
    hit = keys[idx] == codes
    idx[~hit] = len(keys)  # -> IGNORE_INDEX
    return vals[idx]


def _list_images(folder: Path) -> dict[str, Path]:
    """Image files directly in `folder`, by stem (the first of several suffixes wins, png first)."""
    found: dict[str, Path] = {}
    for suffix in IMAGE_SUFFIXES:
        for p in folder.glob(f"*{suffix}"):
            if p.is_file():
                found.setdefault(p.stem, p)
    return found


def _report_missing(what: str, names: Sequence[str], limit: int = 10) -> str:
    shown = "\n  ".join(names[:limit])
    more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {what}:\n  {shown}{more}"


def _check_pairs(root: Path, split: str, missing: list[str], orphans: list[str]) -> None:
    """Raise one DatasetError listing every image without a label and every label without an image."""
    parts = []
    if missing:
        parts.append(_report_missing("images without a label file (looked for)", missing))
    if orphans:
        parts.append(_report_missing("label files without an image", orphans))
    if parts:
        raise DatasetError(f"split {split!r} of {root}: unpaired files:\n" + "\n".join(parts))


# --------------------------------------------------------------------------------------------------------
# Base class


class SegmentationDataset(Dataset):
    """Image/label pairs of one split, decoded to (RGB uint8 HxWx3, class-id uint8 HxW with 255 = ignore).

    Subclasses find the pairs (`_find_samples`) and turn a label file into class ids (`_decode_label`);
    reading, size and value checks and the transform live here so every dataset fails the same way.
    """

    classes: ClassSet

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist or is not a folder")
        samples = self._find_samples()
        if not samples:
            raise DatasetError(f"split {split!r} of {self.root} holds no images")
        samples.sort(key=lambda s: (natural_key(s[0].stem), natural_key(str(s[0]))))
        self.samples: list[tuple[Path, Path]] = samples
        self.names: list[str] = [img.stem for img, _ in samples]

    # subclass hooks ----------------------------------------------------------------------------------
    def _find_samples(self) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def _decode_label(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    # public ------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        """The RGB image of sample `index`, without transform."""
        return read_rgb(self.samples[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        """The class-id mask of sample `index` (255 = ignore), without transform."""
        path = self.samples[index][1]
        try:
            return self._decode_label(path)
        except DatasetError:
            raise
        except Exception as exc:  # anything else still names the file
            raise DatasetError(f"{path}: cannot decode label ({type(exc).__name__}: {exc})") from exc

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index` as (image, mask), checked, without transform (used by GpuResidentData too)."""
        image = self.load_image(index)
        mask = self.load_mask(index)
        if image.shape[:2] != mask.shape[:2]:
            img_path, lbl_path = self.samples[index]
            raise DatasetError(f"{lbl_path}: label size {mask.shape[1]}x{mask.shape[0]} differs from image "
                               f"{img_path} size {image.shape[1]}x{image.shape[0]} (WxH)")
        return image, mask

    def __getitem__(self, index: int) -> Any:
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


# --------------------------------------------------------------------------------------------------------
# CamVid

# The standard grouping of CamVid's 32 classes into SegNet's 11 (as in SegNet's CamVid preparation and
# MATLAB's camvidPixelLabelIDs). Colours are those of the original CamVid release / Kaggle class_dict.csv;
# a class_dict.csv next to the split overrides them (matched by name), Void and unknown names -> 255.
#
# | 11-class id | 11-class name | CamVid 32-class names (RGB)                                               |
# | ----------- | ------------- | ------------------------------------------------------------------------- |
# | 0           | Sky           | Sky (128,128,128)                                                         |
# | 1           | Building      | Building (128,0,0), Wall (64,192,0), Bridge (0,128,64), Tunnel (64,0,64),  |
# |             |               | Archway (192,0,128)                                                       |
# | 2           | Pole          | Column_Pole (192,192,128), TrafficCone (0,0,64)                           |
# | 3           | Road          | Road (128,64,128), LaneMkgsDriv (128,0,192), LaneMkgsNonDriv (192,0,64)   |
# | 4           | Pavement      | Sidewalk (0,0,192), ParkingBlock (64,192,128), RoadShoulder (128,128,192) |
# | 5           | Tree          | Tree (128,128,0), VegetationMisc (192,192,0)                              |
# | 6           | SignSymbol    | SignSymbol (192,128,128), Misc_Text (128,128,64), TrafficLight (0,64,64)  |
# | 7           | Fence         | Fence (64,64,128)                                                         |
# | 8           | Car           | Car (64,0,128), SUVPickupTruck (64,128,192), Truck_Bus (192,128,192),     |
# |             |               | Train (192,64,128), OtherMoving (128,64,64)                               |
# | 9           | Pedestrian    | Pedestrian (64,64,0), Child (192,128,64), CartLuggagePram (64,0,192),     |
# |             |               | Animal (64,128,64)                                                        |
# | 10          | Bicyclist     | Bicyclist (0,128,192), MotorcycleScooter (192,0,192)                      |
# | 255         | (ignore)      | Void (0,0,0), any colour or name not listed                               |
CAMVID32: dict[str, tuple[tuple[int, int, int], str | None]] = {
    "Animal": ((64, 128, 64), "Pedestrian"),
    "Archway": ((192, 0, 128), "Building"),
    "Bicyclist": ((0, 128, 192), "Bicyclist"),
    "Bridge": ((0, 128, 64), "Building"),
    "Building": ((128, 0, 0), "Building"),
    "Car": ((64, 0, 128), "Car"),
    "CartLuggagePram": ((64, 0, 192), "Pedestrian"),
    "Child": ((192, 128, 64), "Pedestrian"),
    "Column_Pole": ((192, 192, 128), "Pole"),
    "Fence": ((64, 64, 128), "Fence"),
    "LaneMkgsDriv": ((128, 0, 192), "Road"),
    "LaneMkgsNonDriv": ((192, 0, 64), "Road"),
    "Misc_Text": ((128, 128, 64), "SignSymbol"),
    "MotorcycleScooter": ((192, 0, 192), "Bicyclist"),
    "OtherMoving": ((128, 64, 64), "Car"),
    "ParkingBlock": ((64, 192, 128), "Pavement"),
    "Pedestrian": ((64, 64, 0), "Pedestrian"),
    "Road": ((128, 64, 128), "Road"),
    "RoadShoulder": ((128, 128, 192), "Pavement"),
    "Sidewalk": ((0, 0, 192), "Pavement"),
    "SignSymbol": ((192, 128, 128), "SignSymbol"),
    "Sky": ((128, 128, 128), "Sky"),
    "SUVPickupTruck": ((64, 128, 192), "Car"),
    "TrafficCone": ((0, 0, 64), "Pole"),
    "TrafficLight": ((0, 64, 64), "SignSymbol"),
    "Train": ((192, 64, 128), "Car"),
    "Tree": ((128, 128, 0), "Tree"),
    "Truck_Bus": ((192, 128, 192), "Car"),
    "Tunnel": ((64, 0, 64), "Building"),
    "VegetationMisc": ((192, 192, 0), "Tree"),
    "Void": ((0, 0, 0), None),
    "Wall": ((64, 192, 0), "Building"),
}


def _name_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# 32-class name -> 11-class name; the 11-class names themselves map to themselves, so an 11-class
# class_dict.csv (some copies ship one) reads too.
_CAMVID_GROUP = {_name_key(n): g for n, (_, g) in CAMVID32.items()}
_CAMVID_GROUP.update({_name_key(n): n for n in CAMVID.names})
CAMVID_VOID = 11  # the void value of SegNet-layout index labels


def camvid_group(name: str) -> int:
    """11-class id of a CamVid class name (32-class or 11-class), IGNORE_INDEX for Void and unknown names."""
    group = _CAMVID_GROUP.get(_name_key(name))
    return CAMVID.names.index(group) if group else IGNORE_INDEX


def read_class_dict(path: Path) -> dict[tuple[int, int, int], int]:
    """class_dict.csv (name,r,g,b) -> {colour: 11-class id}; names outside the standard grouping -> 255."""
    colours: dict[tuple[int, int, int], int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read class dictionary ({exc})") from exc
    if rows and (len(rows[0]) < 2 or not rows[0][1].strip().lstrip("-").isdigit()):
        rows = rows[1:]  # header
    for line, row in enumerate(rows, start=2):
        try:
            name, r, g, b = row[0].strip(), *(int(c) for c in row[1:4])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: row {line} {row} is not 'name,r,g,b'") from None
        if not all(0 <= c <= 255 for c in (r, g, b)):
            raise DatasetError(f"{path}: row {line} {row}: colour components must be 0..255")
        colours[(r, g, b)] = camvid_group(name)
    if not colours:
        raise DatasetError(f"{path}: no classes listed")
    return colours


class CamVidDataset(SegmentationDataset):
    """CamVid in SegNet's 11 classes, from either public layout (auto-detected, or forced with `layout`).

    - 'segnet' (SegNet tutorial): `<split>/X.png` + `<split>annot/X.png`, index labels 0..10, 11 = void.
      Values 0..10 are classes; 11 and 255 (already ignore) become 255; anything else is a DatasetError.
    - 'kaggle' (the layout of the paper's code README): `<split>/X.png` + `<split>_labels/X_L.png` (or
      `X.png`), colour-coded 32-class labels described by `<root>/class_dict.csv` (name,r,g,b), grouped
      to 11 classes by the table above; Void and colours not in the dictionary -> 255. Without a
      class_dict.csv the standard CamVid colours of the table are used.
    If both layouts exist for a split, 'segnet' wins (index labels need no colour decoding).
    """

    classes = CAMVID
    LAYOUTS = ("segnet", "kaggle")

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None,
                 layout: str | None = None):
        if layout is not None and layout not in self.LAYOUTS:
            raise ValueError(f"unknown CamVid layout {layout!r}; known: {', '.join(self.LAYOUTS)}")
        self.layout = layout
        self._colours: dict[tuple[int, int, int], int] | None = None
        n = CAMVID.num_classes
        self._lut, self._ok = _index_lut({i: i for i in range(n)}, [*range(n + 1), IGNORE_INDEX])
        super().__init__(root, split, transform)

    def _detect(self) -> str:
        image_dir = self.root / self.split
        candidates = {"segnet": self.root / f"{self.split}annot", "kaggle": self.root / f"{self.split}_labels"}
        for layout in (self.layout,) if self.layout else self.LAYOUTS:
            if image_dir.is_dir() and candidates[layout].is_dir():
                return layout
        looked = " or ".join(f"{image_dir}/ with {candidates[k]}/ ({k} layout)"
                             for k in ((self.layout,) if self.layout else self.LAYOUTS))
        raise DatasetError(f"no CamVid split {self.split!r} under {self.root}: looked for {looked}")

    def _find_samples(self) -> list[tuple[Path, Path]]:
        self.layout = self._detect()
        image_dir = self.root / self.split
        images = _list_images(image_dir)
        if self.layout == "segnet":
            label_dir = self.root / f"{self.split}annot"
            labels = {p.stem: p for p in label_dir.glob("*.png")}
            candidates = {stem: [label_dir / f"{stem}.png"] for stem in images}
        else:
            label_dir = self.root / f"{self.split}_labels"
            labels = {p.stem: p for p in label_dir.glob("*.png")}
            candidates = {stem: [label_dir / f"{stem}_L.png", label_dir / f"{stem}.png"] for stem in images}
            class_dict = self.root / "class_dict.csv"
            self._colours = (read_class_dict(class_dict) if class_dict.is_file()
                             else {c: camvid_group(n) for n, (c, _) in CAMVID32.items()})
        samples, missing, used = [], [], set()
        for stem, img in images.items():
            lbl = next((c for c in candidates[stem] if c.stem in labels), None)
            if lbl is None:
                missing.append(f"{img} -> {' or '.join(str(c) for c in candidates[stem])}")
            else:
                samples.append((img, lbl))
                used.add(lbl.stem)
        orphans = sorted((str(p) for s, p in labels.items() if s not in used), key=natural_key)
        _check_pairs(self.root, self.split, sorted(missing, key=natural_key), orphans)
        return samples

    def _decode_label(self, path: Path) -> np.ndarray:
        if self.layout == "segnet":
            return map_index_label(read_index_label(path), self._lut, self._ok, path,
                                   f"0..{CAMVID.num_classes - 1} and void {CAMVID_VOID} (or {IGNORE_INDEX})")
        assert self._colours is not None
        return map_colours(read_rgb(path), self._colours)


# --------------------------------------------------------------------------------------------------------
# Cityscapes

# Official labelId -> trainId table (cityscapesScripts labels.py); every other id (0-6, 9, 10, 14-16, 18,
# 29, 30, and -1 = license plate, stored as 255) is ignored.
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_MAX_LABEL_ID = 33


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with
    `gtFine/<split>/<city>/*_gtFine_labelIds.png`, labelIds mapped to the 19 train ids, others -> 255.
    Raw values above 33 (other than 255) are a DatasetError."""

    classes = CITYSCAPES
    IMAGE_SUFFIX = "_leftImg8bit"
    LABEL_SUFFIX = "_gtFine_labelIds"

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None):
        self._lut, self._ok = _index_lut(CITYSCAPES_TRAIN_IDS, [*range(CITYSCAPES_MAX_LABEL_ID + 1), 255])
        super().__init__(root, split, transform)

    def _find_samples(self) -> list[tuple[Path, Path]]:
        image_dir = self.root / "leftImg8bit" / self.split
        label_dir = self.root / "gtFine" / self.split
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DatasetError(f"no Cityscapes split {self.split!r} under {self.root}: looked for {image_dir}/ "
                               f"and {label_dir}/")
        samples, missing = [], []
        for img in image_dir.glob(f"*/*{self.IMAGE_SUFFIX}.png"):
            prefix = img.name[: -len(f"{self.IMAGE_SUFFIX}.png")]
            lbl = label_dir / img.parent.name / f"{prefix}{self.LABEL_SUFFIX}.png"
            if lbl.is_file():
                samples.append((img, lbl))
            else:
                missing.append(f"{img} -> {lbl}")
        paired = {lbl for _, lbl in samples}
        orphans = sorted((str(p) for p in label_dir.glob(f"*/*{self.LABEL_SUFFIX}.png") if p not in paired),
                         key=natural_key)
        _check_pairs(self.root, self.split, sorted(missing, key=natural_key), orphans)
        return samples

    def _decode_label(self, path: Path) -> np.ndarray:
        return map_index_label(read_index_label(path), self._lut, self._ok, path,
                               f"Cityscapes labelIds 0..{CITYSCAPES_MAX_LABEL_ID} (and 255)")


# --------------------------------------------------------------------------------------------------------
# KITTI Road

KITTI_CATEGORIES = ("um", "umm", "uu")
KITTI_VAL_FRACTION = 0.2


class KittiRoadDataset(SegmentationDataset):
    """KITTI Road (data_road): `training/image_2/<cat>_<num>.png` with `training/gt_image_2/<cat>_road_<num>.png`
    (`_lane_` ground truth is ignored), cat in um/umm/uu.

    Labels follow the devkit (helper.getGroundTruth): road where blue > 0 (magenta 255,0,255) -> 1 'road';
    other pixels inside the valid area (red > 0, e.g. red 255,0,0) -> 0 'background'; pixels outside it
    (black, red == 0) are 'don't care' in the devkit's evaluation -> 255.

    Splits: 'training' = all 289 labelled images. 'train' / 'val' are a deterministic 80/20 split of it:
    per category, sorted by frame number, the last round(20%) frames are 'val' (um 19, umm 19, uu 20 of
    95/96/98), the rest 'train' — a contiguous tail keeps neighbouring frames of one drive out of both.
    'testing' has no ground truth and is refused.
    """

    classes = KITTI_ROAD
    SPLITS = ("training", "train", "val")
    _NAME = re.compile(r"^(um|umm|uu)_(\d+)$")

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None):
        if split not in self.SPLITS:
            raise DatasetError(f"unknown KITTI Road split {split!r}; known: {', '.join(self.SPLITS)} "
                               "('testing' has no ground truth)")
        super().__init__(root, split, transform)

    def _find_samples(self) -> list[tuple[Path, Path]]:
        image_dir = self.root / "training" / "image_2"
        label_dir = self.root / "training" / "gt_image_2"
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DatasetError(f"no KITTI Road training data under {self.root}: looked for {image_dir}/ and "
                               f"{label_dir}/")
        by_cat: dict[str, list[tuple[int, Path, Path]]] = {c: [] for c in KITTI_CATEGORIES}
        missing = []
        for stem, img in _list_images(image_dir).items():
            m = self._NAME.match(stem)
            if not m:
                continue
            lbl = label_dir / f"{m.group(1)}_road_{m.group(2)}.png"
            if lbl.is_file():
                by_cat[m.group(1)].append((int(m.group(2)), img, lbl))
            else:
                missing.append(f"{img} -> {lbl}")
        paired = {lbl for items in by_cat.values() for _, _, lbl in items}
        orphans = sorted((str(p) for p in label_dir.glob("*_road_*.png") if p not in paired), key=natural_key)
        _check_pairs(self.root, self.split, sorted(missing, key=natural_key), orphans)
        samples = []
        for items in by_cat.values():
            items.sort(key=lambda t: t[0])
            n_val = round(KITTI_VAL_FRACTION * len(items)) if self.split != "training" else 0
            cut = len(items) - n_val
            chosen = items if self.split == "training" else items[:cut] if self.split == "train" else items[cut:]
            samples.extend((img, lbl) for _, img, lbl in chosen)
        return samples

    def _decode_label(self, path: Path) -> np.ndarray:
        bgr = _decode(path, cv2.IMREAD_COLOR)
        road = bgr[:, :, 0] > 0
        valid = bgr[:, :, 2] > 0
        mask = np.full(bgr.shape[:2], IGNORE_INDEX, np.uint8)
        mask[valid] = 0
        mask[valid & road] = 1
        return mask


# --------------------------------------------------------------------------------------------------------
# Registry

# + "folder" (msseg_core/data/folder.py), which builds on this module and is registered by msseg_core.data.
DATASETS: dict[str, type[SegmentationDataset]] = {
    "camvid": CamVidDataset,
    "cityscapes": CityscapesDataset,
    "kitti_road": KittiRoadDataset,
}


class SelectedFrames(SegmentationDataset):
    """The frames a split expression names (msseg_core.splits), read as one dataset, in order:
    'train+val' (the final model of a recipe chosen on train -> val, as every published CamVid test figure is
    trained), 'train:-0006R0+val' / 'train:0006R0' (leave one sequence out: a score on streets never seen)."""

    def __init__(self, parts: Sequence[tuple[SegmentationDataset, Sequence[int]]], split: str,
                 transform: Transform | None = None):
        if not parts:
            raise DatasetError("no split to read")
        classes = {p.classes for p, _ in parts}
        if len(classes) != 1:
            raise DatasetError(f"cannot join splits with different classes: {sorted(c.name for c in classes)}")
        self.parts = [p for p, _ in parts]
        self.classes = self.parts[0].classes
        self.root = self.parts[0].root
        self.split = split
        self.transform = transform
        self._where = [(k, i) for k, (_, chosen) in enumerate(parts) for i in chosen]
        self.samples = [self.parts[k].samples[i] for k, i in self._where]
        self.names = [self.parts[k].names[i] for k, i in self._where]
        seen: set[Path] = set()
        for (image, _), name in zip(self.samples, self.names, strict=True):
            if image in seen:
                raise DatasetError(f"split {split!r} names frame {name!r} twice (its parts overlap)")
            seen.add(image)

    def load_image(self, index: int) -> np.ndarray:
        part, i = self._where[index]
        return self.parts[part].load_image(i)

    def load_mask(self, index: int) -> np.ndarray:
        part, i = self._where[index]
        return self.parts[part].load_mask(i)


def _select(ds: SegmentationDataset, part: SplitPart, spec: str) -> list[int]:
    """The indices of `ds` that `part` keeps; a prefix that matches no frame is an error, because a typo in a
    held-out sequence's name would otherwise train on the frames meant to be held out."""
    for prefix in part.prefixes:
        if not any(name.startswith(prefix) for name in ds.names):
            some = sorted({name.split("_")[0] for name in ds.names}, key=natural_key)[:8]
            raise DatasetError(f"split {spec!r}: no frame of {part.split!r} in {ds.root} starts with {prefix!r} "
                               f"(its names start e.g. with {', '.join(some)})")
    chosen = [i for i, name in enumerate(ds.names) if part.keeps(name)]
    if not chosen:
        raise DatasetError(f"split {spec!r}: {str(part)!r} leaves no frame of {part.split!r}")
    return chosen


def build_dataset(name: str, root: str | Path, split: str, transform: Transform | None = None,
                  **kwargs: Any) -> SegmentationDataset:
    """The dataset `name` ('camvid', 'cityscapes', 'kitti_road', 'folder': your own, msseg_core.data.folder,
    registered by the package); extra keywords go to its class (e.g. CamVid's `layout`). `split` is a split
    expression (msseg_core.splits): a split name, splits joined with '+' ('train+val'), each optionally
    narrowed to frames by name prefix ('train:0006R0', 'train:-0006R0+val')."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
    try:
        parts = parse_split(split)
    except SplitError as exc:
        raise DatasetError(str(exc)) from None
    if len(parts) == 1 and not parts[0].prefixes:
        return cls(root, parts[0].split, transform=transform, **kwargs)
    opened: dict[str, SegmentationDataset] = {}
    chosen = []
    for part in parts:
        if part.split not in opened:  # 'train:0001TP+train:0016E5' reads train once
            opened[part.split] = cls(root, part.split, **kwargs)
        ds = opened[part.split]
        chosen.append((ds, _select(ds, part, split)))
    return SelectedFrames(chosen, format_split(parts), transform=transform)


__all__ = [
    "CAMVID32", "CITYSCAPES_TRAIN_IDS", "DATASETS", "CamVidDataset", "CityscapesDataset", "DatasetError",
    "KittiRoadDataset", "SegmentationDataset", "SelectedFrames", "build_dataset", "camvid_group", "map_colours",
    "natural_key", "read_class_dict", "read_index_label", "read_rgb",
]
