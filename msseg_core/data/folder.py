"""Your own data: the "folder" dataset (images/, labels/, classes.yaml, train.txt / val.txt) and `msseg-data check`.

    DIR/classes.yaml         the class table (format below; docs/own_data.md has the full story)
    DIR/images/<name>.png    camera frames (.png, .jpg, .jpeg, .bmp)
    DIR/labels/<name>.png    one PNG per frame, same size: class ids (single channel, 8 bit) or colours
                             (RGB or palette PNG, as CVAT's "Segmentation mask" export and CamVid's originals)
    DIR/train.txt, val.txt   names of the frames of each split, one per line (`<split>.txt` for any split);
                             without both, the last `val_fraction` of the frames (natural sort order) are val

classes.yaml:

    classes:                       # class id = position in this list (0, 1, ...)
      - {name: road, color: [128, 64, 128], drivable: true}
      - {name: sidewalk, color: [244, 35, 232], ground: true}   # on the ground, not drivable (ground points)
      - {name: obstacle, color: [220, 20, 60], label_colors: [[64, 0, 128]]}  # more colours meaning this class
      - {name: other, color: [70, 70, 70]}
    void: 255                      # index-label value of unlabelled pixels (255 is always accepted as void too)
    void_colors: [[0, 0, 0]]       # colours of unlabelled pixels (default: black, unless a class is black)
    labels: auto                   # auto (single channel = ids, colour = colours) | index | color
    val_fraction: 0.2              # only without train.txt / val.txt
    name: my_robot                 # dataset name stored in checkpoints (default: the folder's name)

Samples are (uint8 HxWx3 RGB, uint8 HxW class ids, 255 = ignore) like every other dataset; the ClassSet
(names, palette = `color`, road = the drivable classes, ground = the drivable and `ground: true` ones)
comes from classes.yaml and goes into checkpoints,
so a node running the fine-tuned model publishes these classes and its road mask from the drivable ones.
A table without a drivable class is refused (the node's road mask needs one). `check_folder` reports
every problem of a folder at once, one line each, naming the file; the dataset raises the same problems
as DatasetError when it meets them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from msseg_core.classes import IGNORE_INDEX, ClassSet
from msseg_core.data.datasets import (
    DatasetError,
    SegmentationDataset,
    Transform,
    _decode,
    _list_images,
    natural_key,
    read_rgb,
    rgb_codes,
)

CLASSES_FILE = "classes.yaml"
IMAGES, LABELS = "images", "labels"
DEFAULT_VAL_FRACTION = 0.2
LABEL_FORMATS = ("auto", "index", "color")
_KEYS = {"classes", "void", "void_colors", "labels", "val_fraction", "name"}
_CLASS_KEYS = {"name", "color", "drivable", "ground", "label_colors"}


# --------------------------------------------------------------------------------------------------------
# classes.yaml


@dataclass(frozen=True)
class ClassTable:
    """classes.yaml, parsed and checked: the ClassSet plus how label files encode it."""

    classes: ClassSet
    void: int = IGNORE_INDEX
    colours: dict[int, int] = field(default_factory=dict)  # 0xRRGGBB -> class id (IGNORE_INDEX = void)
    labels: str = "auto"
    val_fraction: float | None = None

    @property
    def accepted(self) -> str:
        """The index values a label may hold, for messages."""
        voids = sorted({self.void, IGNORE_INDEX})
        return f"class ids 0..{self.classes.num_classes - 1} or void {' / '.join(map(str, voids))}"

    def decode_label(self, path: Path) -> np.ndarray:
        """A label file -> class ids (IGNORE_INDEX for void); DatasetError naming the file otherwise."""
        raw = _decode(path, cv2.IMREAD_UNCHANGED)
        if raw.dtype != np.uint8:
            raise DatasetError(f"{path}: label must be 8-bit, got {raw.dtype} (16-bit PNG?)")
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[:, :, 0]
        kind = self.labels if self.labels != "auto" else ("index" if raw.ndim == 2 else "color")
        if kind == "index":
            if raw.ndim == 3:
                if not (np.array_equal(raw[:, :, 0], raw[:, :, 1]) and np.array_equal(raw[:, :, 0], raw[:, :, 2])):
                    raise DatasetError(f"{path}: colour label where classes.yaml says labels: index")
                raw = raw[:, :, 0]
            return self._map_ids(raw, path)
        if raw.ndim == 2:
            raise DatasetError(f"{path}: single-channel label where classes.yaml says labels: color")
        return self._map_colours(np.ascontiguousarray(raw[:, :, 2::-1]), path)  # BGR(A) -> RGB

    def _map_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        n = self.classes.num_classes
        lut = np.full(256, -1, np.int16)
        lut[:n] = np.arange(n)
        lut[[self.void, IGNORE_INDEX]] = IGNORE_INDEX
        ids = lut[raw]
        bad = ids < 0
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(v) for v in values[:12]) + (" ..." if len(values) > 12 else "")
            raise DatasetError(f"{path}: label values {{{shown}}} in {int(bad.sum())} pixels are not in the class "
                               f"table ({self.accepted})")
        return ids.astype(np.uint8)

    def _map_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        codes = rgb_codes(rgb)
        keys = np.array(sorted(self.colours), np.int64)
        vals = np.array([self.colours[k] for k in sorted(self.colours)], np.uint8)
        idx = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
        hit = keys[idx] == codes
        if not hit.all():
            unknown, counts = np.unique(codes[~hit], return_counts=True)
            order = np.argsort(-counts)[:6]
            shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255}) x {n}" for c, n in
                              zip(unknown[order], counts[order], strict=True))
            more = f" and {len(unknown) - len(order)} more" if len(unknown) > len(order) else ""
            raise DatasetError(f"{path}: {int((~hit).sum())} pixels have colours that are not in the palette of "
                               f"{CLASSES_FILE}: {shown}{more} (RGB x pixels)")
        return vals[idx]


def _rgb(value: object, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise DatasetError(f"{where}: a colour is [r, g, b] with 0..255 each, got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def read_class_table(root: str | Path) -> ClassTable:
    """Parse DIR/classes.yaml; one DatasetError line naming the file and the entry for anything malformed.
    A table without a drivable class is an error too (see `class_table_problems`)."""
    table = parse_class_table(root)
    problems = class_table_problems(table, Path(root) / CLASSES_FILE)
    if problems:
        raise DatasetError(problems[0])
    return table


def parse_class_table(root: str | Path) -> ClassTable:
    """classes.yaml -> ClassTable, checking its form (names, colours, void) but not the drivable classes."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing (the class table: names, colours, void, drivable classes)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path}: cannot read it as YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise DatasetError(f"{path}: expected a mapping with a non-empty list `classes:` "
                           "(- {name: road, color: [128, 64, 128], drivable: true})")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise DatasetError(f"{path}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    names, palette, road, ground, colours = [], [], [], [], {}
    for i, entry in enumerate(data["classes"]):
        where = f"{path}: classes[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise DatasetError(f"{where}: expected {{name: ..., color: [r, g, b]}}, got {entry!r}")
        name = entry["name"].strip()
        where = f"{path}: class {name!r}"
        if set(entry) - _CLASS_KEYS:
            raise DatasetError(f"{where}: unknown keys {sorted(set(entry) - _CLASS_KEYS)}; "
                               f"known: {sorted(_CLASS_KEYS)}")
        if name in names:
            raise DatasetError(f"{where}: listed twice")
        if "color" not in entry:
            raise DatasetError(f"{where}: no color (its [r, g, b] in colour labels and in the node's color_mask)")
        drivable = entry.get("drivable", False)
        ground_class = entry.get("ground", drivable)
        for key, flag in (("drivable", drivable), ("ground", ground_class)):
            if not isinstance(flag, bool):
                raise DatasetError(f"{where}: {key} must be true or false, got {flag!r}")
        extra = entry.get("label_colors", [])
        if not isinstance(extra, list):
            raise DatasetError(f"{where}: label_colors must be a list of [r, g, b]")
        for colour in [_rgb(entry["color"], where), *(_rgb(c, where) for c in extra)]:
            code = (colour[0] << 16) | (colour[1] << 8) | colour[2]
            if code in colours:
                raise DatasetError(f"{where}: colour {list(colour)} is already {names[colours[code]]!r}'s")
            colours[code] = len(names)
        names.append(name)
        palette.append(_rgb(entry["color"], where))
        if drivable:
            road.append(name)
        if ground_class:
            ground.append(name)
    if len(names) >= IGNORE_INDEX:
        raise DatasetError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX - 1} fit in 8-bit labels with void")
    void = data.get("void", IGNORE_INDEX)
    if isinstance(void, bool) or not isinstance(void, int) or not len(names) <= void <= 255:
        raise DatasetError(f"{path}: void must be a label value {len(names)}..255 (not a class id), got {void!r}")
    black = 0 in colours
    void_colours = data.get("void_colors", [] if black else [[0, 0, 0]])
    if not isinstance(void_colours, list):
        raise DatasetError(f"{path}: void_colors must be a list of [r, g, b]")
    for colour in void_colours:
        r, g, b = _rgb(colour, f"{path}: void_colors")
        code = (r << 16) | (g << 8) | b
        if code in colours:
            raise DatasetError(f"{path}: void colour {[r, g, b]} is class {names[colours[code]]!r}'s colour")
        colours[code] = IGNORE_INDEX
    labels = data.get("labels", "auto")
    if labels not in LABEL_FORMATS:
        raise DatasetError(f"{path}: labels must be one of {', '.join(LABEL_FORMATS)}, got {labels!r}")
    fraction = data.get("val_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 <= fraction < 1):
        raise DatasetError(f"{path}: val_fraction must be a number in [0, 1), got {fraction!r}")
    name = data.get("name") or Path(root).resolve().name
    if not isinstance(name, str):
        raise DatasetError(f"{path}: name must be a string, got {name!r}")
    return ClassTable(ClassSet(name, tuple(names), tuple(palette), tuple(road), tuple(ground)), void, colours, labels,
                      None if fraction is None else float(fraction))


def class_table_problems(table: ClassTable, path: Path) -> list[str]:
    """What a parsed table cannot be used for: today, a table without a drivable class."""
    if not table.classes.road:
        return [f"{path}: no class is drivable: mark the road class(es) `drivable: true` (the node's road_mask "
                "and road_grid are made of them)"]
    return []


def write_class_table(root: str | Path, classes: ClassSet) -> Path:
    """A classes.yaml for a ClassSet (e.g. a checkpoint's, beside its pre-labels), written atomically."""
    from msseg_core.io import write_text_atomic

    ground = set(classes.ground or classes.road)
    entries = [{"name": n, "color": list(c), **({"drivable": True} if n in classes.road else {}),
                **({"ground": True} if n in ground and n not in classes.road else {})}
               for n, c in zip(classes.names, classes.palette, strict=True)]
    text = yaml.safe_dump({"name": classes.name, "classes": entries, "void": IGNORE_INDEX},
                          sort_keys=False, default_flow_style=None)
    return write_text_atomic(Path(root) / CLASSES_FILE, text)


# --------------------------------------------------------------------------------------------------------
# Files and splits


def _labels(root: Path) -> dict[str, Path]:
    folder = root / LABELS
    return {p.stem: p for p in folder.glob("*.png") if p.is_file()} if folder.is_dir() else {}


def split_files(root: Path) -> dict[str, Path]:
    """`<split>.txt` files of the folder, by split name."""
    return {p.stem: p for p in sorted(root.glob("*.txt")) if p.is_file()}


def read_split_list(path: Path) -> list[tuple[int, str]]:
    """(line number, frame name) of a split file: one name per line ('images/x.png', 'x.png' and 'x' all
    name frame x; a second column such as a label path is ignored); blank lines and # comments skipped."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append((number, Path(text.split()[0]).stem))
    return out


def ratio_split(names: Sequence[str], split: str, fraction: float) -> list[str]:
    """train / val by a fraction: frames in natural order, the last round(fraction * n) (at least one when
    fraction > 0 and n > 1) are val, the rest train. A contiguous tail keeps neighbouring frames of one
    drive out of both splits."""
    ordered = sorted(names, key=natural_key)
    n_val = round(fraction * len(ordered))
    if fraction > 0 and len(ordered) > 1:
        n_val = max(1, n_val)
    cut = len(ordered) - n_val
    return ordered[:cut] if split == "train" else ordered[cut:]


def split_names(root: Path, split: str, table: ClassTable, images: dict[str, Path]) -> list[str]:
    """The frame names of `split`: from `<split>.txt`, else (train / val only, and only when neither
    train.txt nor val.txt exists) by the table's val_fraction (default 0.2) over every image."""
    files = split_files(root)
    if split in files:
        return [name for _, name in read_split_list(files[split])]
    if split in ("train", "val"):
        other = "val" if split == "train" else "train"
        if other in files:
            raise DatasetError(f"{root}: {other}.txt exists but {split}.txt does not (write both, or neither and "
                               f"set val_fraction in {CLASSES_FILE})")
        fraction = DEFAULT_VAL_FRACTION if table.val_fraction is None else table.val_fraction
        return ratio_split(list(images), split, fraction)
    raise DatasetError(f"{root}: no {split}.txt for split {split!r}")


# --------------------------------------------------------------------------------------------------------
# The dataset


class FolderDataset(SegmentationDataset):
    """A folder in the layout above; its ClassSet comes from the folder's classes.yaml."""

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None):
        if not Path(root).is_dir():
            raise DatasetError(f"dataset root {root} does not exist or is not a folder")
        self.table = read_class_table(root)
        self.classes = self.table.classes
        super().__init__(root, split, transform)

    def _find_samples(self) -> list[tuple[Path, Path]]:
        image_dir = self.root / IMAGES
        if not image_dir.is_dir() or not (self.root / LABELS).is_dir():
            raise DatasetError(f"{self.root}: expected folders {IMAGES}/ and {LABELS}/ beside {CLASSES_FILE}")
        images, labels = _list_images(image_dir), _labels(self.root)
        samples, missing = [], []
        for name in split_names(self.root, self.split, self.table, images):
            if name not in images:
                missing.append(f"{name}: no image {image_dir}/{name}.*")
            elif name not in labels:
                missing.append(f"{images[name]}: no label {self.root / LABELS / name}.png")
            else:
                samples.append((images[name], labels[name]))
        if missing:
            shown = "; ".join(missing[:5]) + (f"; ... and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetError(f"split {self.split!r} of {self.root}: {len(missing)} frames unusable: {shown}")
        return samples

    def _decode_label(self, path: Path) -> np.ndarray:
        return self.table.decode_label(path)


# --------------------------------------------------------------------------------------------------------
# msseg-data check


@dataclass
class SplitStats:
    images: int = 0  # usable pairs counted below
    listed: int = 0  # frames the split names (with an image)
    pixels: np.ndarray | None = None  # per class, then void last
    images_with: np.ndarray | None = None  # images holding each class, then void last


@dataclass
class CheckReport:
    root: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    drivable: list[str] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        def stats(s: SplitStats) -> dict:
            if s.pixels is None:
                return {"images": s.images, "listed": s.listed}
            names = [*self.class_names, "(void)"]
            return {"images": s.images, "listed": s.listed,
                    "pixels": dict(zip(names, map(int, s.pixels), strict=True)),
                    "images_per_class": dict(zip(names, map(int, s.images_with), strict=True))}

        return {"root": self.root, "ok": self.ok, "problems": self.problems, "warnings": self.warnings,
                "classes": self.class_names, "drivable": self.drivable,
                "splits": {k: stats(v) for k, v in self.splits.items()}}

    def lines(self) -> list[str]:
        """The human report: problems, warnings, then class frequencies per split."""
        out = [f"error: {p}" for p in self.problems] + [f"warning: {w}" for w in self.warnings]
        for split, s in self.splits.items():
            usable = f"{s.images} of {s.listed} frames usable" if s.images != s.listed else f"{s.images} images"
            out.append(f"split {split}: {usable}")
            if s.pixels is None or not s.images:
                continue
            total = max(1, int(s.pixels.sum()))
            width = max(8, *(len(n) for n in self.class_names))
            out.append(f"  {'class':<{width}} {'pixels':>12} {'share':>7} {'images':>7}")
            for name, px, im in zip([*self.class_names, "(void)"], s.pixels, s.images_with, strict=True):
                mark = " (drivable)" if name in self.drivable else ""
                out.append(f"  {name:<{width}} {int(px):>12} {100 * px / total:>6.2f}% {int(im):>7}{mark}")
        verdict = (f"{self.root}: OK" if self.ok else
                   f"{self.root}: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}")
        return [*out, verdict]


def check_folder(root: str | Path) -> CheckReport:
    """Every problem of a folder dataset, one line each naming the file (paths relative to the folder), and the
    class frequencies (pixels and images per class) of each split. Reads everything, writes nothing."""
    root = Path(root)
    report = CheckReport(str(root))
    problems, warn = report.problems, report.warnings
    if not root.is_dir():
        problems.append(f"{root}: no such folder")
        return report
    table = None
    try:
        table = parse_class_table(root)
        problems += class_table_problems(table, Path(CLASSES_FILE))
        report.class_names, report.drivable = list(table.classes.names), list(table.classes.road)
    except DatasetError as exc:
        problems.append(str(exc).replace(f"{root}/", ""))
    for folder in (IMAGES, LABELS):
        if not (root / folder).is_dir():
            problems.append(f"{folder}/: missing (the layout: {IMAGES}/, {LABELS}/, {CLASSES_FILE}, train.txt, "
                            "val.txt)")
    images, labels = (_list_images(root / IMAGES) if (root / IMAGES).is_dir() else {}), _labels(root)
    others = sorted((root / LABELS).glob("*"), key=lambda p: natural_key(p.name)) if (root / LABELS).is_dir() else []
    for p in others:
        if p.is_file() and p.suffix.lower() != ".png" and p.stem not in labels:
            problems.append(f"{LABELS}/{p.name}: labels must be PNG files (lossless)")
    for name in sorted(set(images) - set(labels), key=natural_key):
        problems.append(f"{IMAGES}/{images[name].name}: no label {LABELS}/{name}.png")
    for name in sorted(set(labels) - set(images), key=natural_key):
        problems.append(f"{LABELS}/{name}.png: no image {IMAGES}/{name}.* for it")
    splits = _check_splits(root, table, images, report)
    pairs = sorted(set(images) & set(labels), key=natural_key)
    masks = {name: _check_pair(root, table, images[name], labels[name], problems) for name in pairs}
    if table is not None:
        n = table.classes.num_classes
        for split, names in splits.items():
            stats = SplitStats(0, len(names), np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64))
            for name in names:
                counts = masks.get(name)
                if counts is not None:
                    stats.images += 1
                    stats.pixels += counts
                    stats.images_with += counts > 0
            report.splits[split] = stats
            if split == "train" and names:
                for name, px in zip(table.classes.names, stats.pixels, strict=False):
                    if px == 0:
                        warn.append(f"class {name!r} has no pixel in split train: the model cannot learn it")
    return report


def _check_splits(root: Path, table: ClassTable | None, images: dict[str, Path],
                  report: CheckReport) -> dict[str, list[str]]:
    problems, warn = report.problems, report.warnings
    files = split_files(root)
    splits: dict[str, list[str]] = {}
    for split, path in files.items():
        try:
            entries = read_split_list(path)
        except DatasetError as exc:
            problems.append(str(exc).replace(f"{root}/", ""))
            continue
        seen: set[str] = set()
        for number, name in entries:
            if name not in images:
                problems.append(f"{path.name} line {number}: no image {IMAGES}/{name}.*")
            elif name in seen:
                warn.append(f"{path.name} line {number}: {name} listed twice")
            seen.add(name)
        splits[split] = [n for n in dict.fromkeys(n for _, n in entries) if n in images]
    if "train" in files or "val" in files:
        for split in ("train", "val"):
            if split not in files:
                problems.append(f"{split}.txt: missing ({'val' if split == 'train' else 'train'}.txt exists; "
                                f"write both, or neither and set val_fraction in {CLASSES_FILE})")
    else:
        fraction = DEFAULT_VAL_FRACTION if table is None or table.val_fraction is None else table.val_fraction
        for split in ("train", "val"):
            splits[split] = ratio_split(list(images), split, fraction)
        report.warnings.append(f"no train.txt / val.txt: the last {fraction:g} of the frames (natural order) are "
                               "val, the rest train")
    for split in ("train", "val"):
        if split in splits and not splits[split]:
            source = f"{split}.txt lists no image" if split in files else "too few frames for val_fraction"
            problems.append(f"split {split!r} is empty ({source})")
    if "train" in splits and "val" in splits:
        both = sorted(set(splits["train"]) & set(splits["val"]), key=natural_key)
        if both:
            problems.append(f"train.txt and val.txt both list {len(both)} frames ({', '.join(both[:5])}"
                            f"{', ...' if len(both) > 5 else ''}): val must be held out")
    listed = {n for names in splits.values() for n in names}
    unlisted = [n for n in images if n not in listed]
    if unlisted:
        warn.append(f"{len(unlisted)} frames are in no split file ({', '.join(sorted(unlisted, key=natural_key)[:5])}"
                    f"{', ...' if len(unlisted) > 5 else ''})")
    return splits


def _check_pair(root: Path, table: ClassTable | None, image_path: Path, label_path: Path,
                problems: list[str]) -> np.ndarray | None:
    """Decode one pair; its per-class pixel counts (void last), None (and a problem line) when unusable."""
    def short(exc: Exception) -> str:
        return str(exc).replace(f"{root}/", "")

    image = None
    try:
        image = read_rgb(image_path)
    except DatasetError as exc:
        problems.append(short(exc))
    if table is None:
        return None
    try:
        ids = table.decode_label(label_path)
    except DatasetError as exc:
        problems.append(short(exc))
        return None
    if image is not None and image.shape[:2] != ids.shape:
        problems.append(f"{LABELS}/{label_path.name}: size {ids.shape[1]}x{ids.shape[0]} differs from its image "
                        f"{IMAGES}/{image_path.name} {image.shape[1]}x{image.shape[0]} (WxH)")
        return None
    if image is None:
        return None
    n = table.classes.num_classes
    counts = np.bincount(ids.reshape(-1), minlength=256)
    return np.concatenate([counts[:n], [counts[IGNORE_INDEX]]]).astype(np.int64)


__all__ = ["CLASSES_FILE", "CheckReport", "ClassTable", "FolderDataset", "check_folder", "parse_class_table",
           "read_class_table", "write_class_table"]
