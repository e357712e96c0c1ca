"""Tiny synthetic dataset trees for tests: the real layouts on disk, with content a small network can learn.

Every pixel's colour is its class's CamVid palette colour (plus a little noise and a per-image brightness
change), laid out like a street (sky, buildings / trees, pavement, road, with cars, people, poles, signs,
a fence, and a void patch), so colour alone predicts the class and a tiny model fits it in a few steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from msseg_core.classes import CAMVID, CITYSCAPES, IGNORE_INDEX
from msseg_core.data.datasets import CAMVID32, CAMVID_VOID, CITYSCAPES_TRAIN_IDS

# One 32-class name per 11-class id for the kaggle layout's colour labels, and the other members of its
# group used for some regions, so the 32 -> 11 grouping is exercised.
_KAGGLE_NAMES: dict[int, tuple[str, ...]] = {
    0: ("Sky",), 1: ("Building", "Wall"), 2: ("Column_Pole",), 3: ("Road", "LaneMkgsDriv"),
    4: ("Sidewalk", "ParkingBlock"), 5: ("Tree", "VegetationMisc"), 6: ("SignSymbol",), 7: ("Fence",),
    8: ("Car", "SUVPickupTruck"), 9: ("Pedestrian",), 10: ("Bicyclist",),
}


def _rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def fake_street_label(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A street-like CamVid label map (0..10, IGNORE_INDEX for a void patch) of size (h, w)."""
    h, w = size
    lab = np.empty((h, w), np.uint8)
    sky = int(h * rng.uniform(0.2, 0.3))
    horizon = int(h * rng.uniform(0.45, 0.55))
    kerb = int(h * rng.uniform(0.6, 0.7))
    split_x = int(w * rng.uniform(0.35, 0.65))
    lab[:sky] = 0
    lab[sky:horizon, :split_x] = 1
    lab[sky:horizon, split_x:] = 5
    lab[horizon:kerb] = 4
    lab[kerb:] = 3

    def box(cls: int, y0: int, y1: int, x0: int, x1: int) -> None:
        lab[max(0, y0):max(0, min(h, y1)), max(0, x0):max(0, min(w, x1))] = cls
    fy = horizon - max(1, h // 16)
    box(7, fy, horizon, split_x, w)  # fence along the trees
    px = int(rng.integers(0, max(1, w - 2)))
    box(2, sky, kerb, px, px + max(1, w // 32))  # pole
    box(6, sky, sky + max(2, h // 12), px - max(1, w // 32), px + 2 * max(1, w // 32))  # sign on it
    for _ in range(int(rng.integers(1, 3))):  # cars on the road
        cx, cy = int(rng.integers(0, w)), int(rng.integers(kerb, h))
        box(8, cy - h // 10, cy + h // 12, cx - w // 8, cx + w // 8)
    pxx = int(rng.integers(0, w))
    box(9, horizon - h // 8, kerb, pxx, pxx + max(2, w // 24))  # pedestrian on the pavement
    bx = int(rng.integers(0, w))
    box(10, kerb - h // 10, kerb + h // 12, bx, bx + max(2, w // 16))  # bicyclist at the kerb
    vx = int(rng.integers(0, w - w // 8))
    box(IGNORE_INDEX, h - max(2, h // 12), h, vx, vx + w // 8)  # void patch (ego car bonnet)
    return lab


def fake_image(rng: np.random.Generator, label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """RGB uint8 image whose pixel colour is a deterministic function of the class, plus mild noise."""
    colours = np.zeros((256, 3), np.float32)
    colours[: len(palette)] = np.asarray(palette, np.float32)
    colours[IGNORE_INDEX] = (20, 20, 20)
    img = colours[label] * rng.uniform(0.92, 1.08) + rng.normal(0, 4, (*label.shape, 3))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _write(path: Path, array: np.ndarray, rgb: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array[:, :, ::-1] if rgb else array):
        raise OSError(f"cannot write {path}")


def write_fake_camvid(root: str | Path, split: str = "train", n: int = 8, size: tuple[int, int] = (48, 64),
                      layout: str = "segnet", seed: int = 0, sequence: str = "0001TP") -> Path:
    """Write `n` learnable CamVid-like frames of `size` (h, w) for `split` under `root` in the 'segnet'
    (index labels, 11 = void, plus `<split>.txt`) or 'kaggle' (colour labels `X_L.png`, class_dict.csv)
    layout, named `<sequence>_<frame>` as CamVid's are; returns `root`. Deterministic in (seed, split); call
    again for other splits, or for another sequence of the same split."""
    if layout not in ("segnet", "kaggle"):
        raise ValueError(f"unknown layout {layout!r}; known: segnet, kaggle")
    root = Path(root)
    rng = _rng(seed, split)
    names = [f"{sequence}_{6690 + 30 * i:06d}" for i in range(n)]
    listing = root / f"{split}.txt"
    lines = listing.read_text().splitlines() if listing.is_file() else []
    for name in names:
        label = fake_street_label(rng, size)
        _write(root / split / f"{name}.png", fake_image(rng, label, CAMVID.palette), rgb=True)
        if layout == "segnet":
            disk = np.where(label == IGNORE_INDEX, CAMVID_VOID, label).astype(np.uint8)
            _write(root / f"{split}annot" / f"{name}.png", disk, rgb=False)
            lines.append(f"{split}/{name}.png {split}annot/{name}.png")
        else:
            colour = np.zeros((*size, 3), np.uint8)  # Void = (0, 0, 0)
            for cls, members in _KAGGLE_NAMES.items():
                where = label == cls
                # alternate group members by column band, so e.g. some road is LaneMkgsDriv
                band = (np.arange(size[1]) // 8 % len(members))[None, :].repeat(size[0], 0)
                for k, member in enumerate(members):
                    colour[where & (band == k)] = CAMVID32[member][0]
            _write(root / f"{split}_labels" / f"{name}_L.png", colour, rgb=True)
    if layout == "segnet":
        listing.write_text("\n".join(dict.fromkeys(lines)) + "\n")  # once each, however often called
    else:
        rows = ["name,r,g,b"] + [f"{k},{c[0]},{c[1]},{c[2]}" for k, (c, _) in CAMVID32.items()]
        (root / "class_dict.csv").write_text("\n".join(rows) + "\n")
    return root


_CITYSCAPES_LABEL_ID = {t: i for i, t in CITYSCAPES_TRAIN_IDS.items()}


def write_fake_cityscapes(root: str | Path, split: str = "train", n: int = 4, size: tuple[int, int] = (32, 64),
                          city: str = "testcity", seed: int = 0) -> Path:
    """Write `n` Cityscapes-layout frames (labelIds, some of them ignored ids) for `split`; returns `root`."""
    root = Path(root)
    rng = _rng(seed, split)
    camvid_to_train = {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11, 10: 18}
    for i in range(n):
        label = fake_street_label(rng, size)
        train = np.full(size, IGNORE_INDEX, np.uint8)
        for c, t in camvid_to_train.items():
            train[label == c] = t
        ids = np.zeros(size, np.uint8)  # 0 = unlabeled
        for t, lid in _CITYSCAPES_LABEL_ID.items():
            ids[train == t] = lid
        prefix = f"{city}_{i:06d}_000019"
        _write(root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png",
               fake_image(rng, train, CITYSCAPES.palette), rgb=True)
        _write(root / "gtFine" / split / city / f"{prefix}_gtFine_labelIds.png", ids, rgb=False)
    return root


def write_fake_kitti_road(root: str | Path, n_per_category: int = 2, size: tuple[int, int] = (32, 96),
                          seed: int = 0) -> Path:
    """Write KITTI Road `training/` frames (um, umm, uu) with devkit-coloured road ground truth (magenta
    road, red non-road, a black don't-care strip) and a `_lane_` file to be ignored; returns `root`."""
    root = Path(root)
    rng = _rng(seed, "training")
    h, w = size
    for cat in ("um", "umm", "uu"):
        for i in range(n_per_category):
            road = np.zeros(size, bool)
            top = int(h * rng.uniform(0.4, 0.6))
            for y in range(top, h):
                half = (y - top + 1) * w // (2 * (h - top))
                road[y, max(0, w // 2 - half):w // 2 + half + 1] = True
            gt = np.zeros((h, w, 3), np.uint8)
            gt[...] = (255, 0, 0)
            gt[road] = (255, 0, 255)
            gt[:2] = (0, 0, 0)  # outside the valid area
            image = np.where(road[..., None], np.uint8([128, 64, 128]), np.uint8([90, 120, 60]))
            image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
            _write(root / "training" / "image_2" / f"{cat}_{i:06d}.png", image, rgb=True)
            _write(root / "training" / "gt_image_2" / f"{cat}_road_{i:06d}.png", gt, rgb=True)
            if cat == "um":
                _write(root / "training" / "gt_image_2" / f"{cat}_lane_{i:06d}.png", gt, rgb=True)
    return root


__all__ = ["fake_image", "fake_street_label", "write_fake_camvid", "write_fake_cityscapes", "write_fake_kitti_road"]
