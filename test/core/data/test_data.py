"""Datasets, transforms and the GPU-resident path, on tiny trees written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fake_datasets import write_fake_camvid, write_fake_cityscapes, write_fake_kitti_road

from msseg_core.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from msseg_core.classes import CAMVID, CITYSCAPES, IGNORE_INDEX, KITTI_ROAD
from msseg_core.data import (
    CamVidDataset,
    DatasetError,
    GpuResidentData,
    SegmentationDataset,
    TrainTransform,
    build_dataset,
)
from msseg_core.data.datasets import CAMVID32

REAL_CAMVID = Path("/work/shared/datasets/camvid")


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def write_gray(path: Path, gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), gray)
    return path


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- CamVid


def test_camvid_segnet_values_and_frame_order(tmp_path):
    raw = np.arange(12, dtype=np.uint8).repeat(2)[None].repeat(3, 0)  # 3x24, values 0..11
    names = ["Seq05VD_f10", "0001TP_000090", "Seq05VD_f2", "0001TP_000120"]
    for name in names:  # written out of order
        write_rgb(tmp_path / "test" / f"{name}.png", noise_image(3, 24))
        write_gray(tmp_path / "testannot" / f"{name}.png", raw)
    ds = build_dataset("camvid", tmp_path, "test")
    assert isinstance(ds, SegmentationDataset) and ds.classes is CAMVID and ds.layout == "segnet"
    assert ds.root == tmp_path and ds.split == "test"
    assert ds.names == ["0001TP_000090", "0001TP_000120", "Seq05VD_f2", "Seq05VD_f10"]
    assert [img.stem for img, _ in ds.samples] == ds.names
    assert all(lbl.parent.name == "testannot" and lbl.stem == img.stem for img, lbl in ds.samples)
    image, mask = ds[0]
    assert image.dtype == np.uint8 and image.shape == (3, 24, 3)
    assert mask.dtype == np.uint8 and mask.shape == (3, 24)
    expected = np.where(raw == 11, IGNORE_INDEX, raw)
    np.testing.assert_array_equal(mask, expected)
    # RGB order: the file was written from RGB, so reading must give it back unchanged
    np.testing.assert_array_equal(image, noise_image(3, 24))


def test_camvid_kaggle_colour_mapping(tmp_path):
    rows = {"Road": (128, 64, 128), "LaneMkgsDriv": (128, 0, 192), "LaneMkgsNonDriv": (192, 0, 64),
            "Sidewalk": (0, 0, 192), "RoadShoulder": (128, 128, 192), "SUVPickupTruck": (64, 128, 192),
            "Truck_Bus": (192, 128, 192), "Sky": (128, 128, 128), "Child": (192, 128, 64),
            "MotorcycleScooter": (192, 0, 192), "TrafficCone": (0, 0, 64), "Void": (0, 0, 0),
            "SomethingNew": (10, 20, 30)}
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\n" + "".join(f"{k},{r},{g},{b}\n"
                                                                      for k, (r, g, b) in rows.items()))
    cells = [("Road", 3), ("LaneMkgsDriv", 3), ("LaneMkgsNonDriv", 3), ("Sidewalk", 4), ("RoadShoulder", 4),
             ("SUVPickupTruck", 8), ("Truck_Bus", 8), ("Sky", 0), ("Child", 9), ("MotorcycleScooter", 10),
             ("TrafficCone", 2), ("Void", 255), ("SomethingNew", 255)]
    colour = np.array([[rows[n] for n, _ in cells] + [(1, 2, 3)]], np.uint8)  # + a colour not in the csv
    expected = np.array([[c for _, c in cells] + [255]], np.uint8)
    write_rgb(tmp_path / "val" / "a.png", noise_image(1, colour.shape[1]))
    write_rgb(tmp_path / "val_labels" / "a_L.png", colour)  # Kaggle naming
    write_rgb(tmp_path / "val" / "b.png", noise_image(1, colour.shape[1]))
    write_rgb(tmp_path / "val_labels" / "b.png", colour)  # same-name labels are accepted too
    ds = build_dataset("camvid", tmp_path, "val")
    assert ds.layout == "kaggle" and ds.names == ["a", "b"]
    assert ds.samples[0][1].name == "a_L.png" and ds.samples[1][1].name == "b.png"
    for i in range(2):
        np.testing.assert_array_equal(ds[i][1], expected)


def test_camvid_standard_grouping_table():
    """The 32 -> 11 table: every class mapped, the groups of SegNet's preparation."""
    assert len(CAMVID32) == 32 and len({c for c, _ in CAMVID32.values()}) == 32
    groups: dict[str, set[str]] = {}
    for name, (_, group) in CAMVID32.items():
        groups.setdefault(group, set()).add(name)
    assert groups[None] == {"Void"}
    assert groups["Road"] == {"Road", "LaneMkgsDriv", "LaneMkgsNonDriv"}
    assert groups["Pavement"] == {"Sidewalk", "ParkingBlock", "RoadShoulder"}
    assert groups["Car"] == {"Car", "SUVPickupTruck", "Truck_Bus", "Train", "OtherMoving"}
    assert set(groups) - {None} == set(CAMVID.names)


def test_camvid_layout_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError) as err:
        CamVidDataset(tmp_path, "train")
    msg = str(err.value)
    assert "trainannot" in msg and "train_labels" in msg and str(tmp_path / "train") in msg
    with pytest.raises(ValueError, match="unknown CamVid layout"):
        CamVidDataset(tmp_path, "train", layout="voc")
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("camvid", tmp_path / "nope", "train")


def test_fake_camvid_both_layouts_agree(tmp_path):
    a = build_dataset("camvid", write_fake_camvid(tmp_path / "s", "train", n=3, layout="segnet"), "train")
    b = build_dataset("camvid", write_fake_camvid(tmp_path / "k", "train", n=3, layout="kaggle"), "train")
    assert a.names == b.names and len(a) == 3
    seen = set()
    for i in range(3):
        (ia, ma), (ib, mb) = a[i], b[i]
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
        seen |= set(np.unique(ma).tolist())
    assert seen == set(range(11)) | {IGNORE_INDEX}
    assert (tmp_path / "s" / "train.txt").read_text().count("\n") == 3


def test_build_dataset_unknown_name(tmp_path):
    with pytest.raises(ValueError) as err:
        build_dataset("pascal", tmp_path, "train")
    assert all(k in str(err.value) for k in ("camvid", "cityscapes", "kitti_road"))


# ---------------------------------------------------------------------------------- Cityscapes / KITTI


def test_cityscapes_train_ids(tmp_path):
    ids = np.array([[7, 0, 8, 26, 33, 6, 24, 31]], np.uint8)
    expected = np.array([[0, 255, 1, 13, 18, 255, 11, 16]], np.uint8)
    for city, frame in (("zurich", 2), ("aachen", 10), ("aachen", 9)):
        stem = f"{city}_{frame:06d}_000019"
        write_rgb(tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", noise_image(1, 8))
        write_gray(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", ids)
        write_gray(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png", ids)  # not a label
    ds = build_dataset("cityscapes", tmp_path, "val")
    assert ds.classes is CITYSCAPES
    assert ds.names == ["aachen_000009_000019_leftImg8bit", "aachen_000010_000019_leftImg8bit",
                        "zurich_000002_000019_leftImg8bit"]
    np.testing.assert_array_equal(ds[0][1], expected)
    # a value no labelId has
    bad = write_gray(tmp_path / "gtFine" / "val" / "zurich" / "zurich_000002_000019_gtFine_labelIds.png",
                     np.array([[7, 40, 0, 0, 0, 0, 0, 0]], np.uint8))
    with pytest.raises(DatasetError, match="40") as err:
        ds[2]
    assert str(bad) in str(err.value)


def test_kitti_road_mapping_and_splits(tmp_path):
    write_fake_kitti_road(tmp_path, n_per_category=5)
    gt = np.zeros((2, 3, 3), np.uint8)
    gt[0] = [(255, 0, 255), (255, 0, 0), (0, 0, 0)]
    gt[1] = [(255, 0, 0), (255, 0, 255), (255, 0, 255)]
    write_rgb(tmp_path / "training" / "image_2" / "um_000007.png", noise_image(2, 3))
    write_rgb(tmp_path / "training" / "gt_image_2" / "um_road_000007.png", gt)
    write_rgb(tmp_path / "training" / "gt_image_2" / "um_lane_000007.png", gt[:, :, ::-1])  # ignored
    full = build_dataset("kitti_road", tmp_path, "training")
    assert full.classes is KITTI_ROAD and len(full) == 16
    i = full.names.index("um_000007")
    assert full.samples[i][1].name == "um_road_000007.png"
    np.testing.assert_array_equal(full[i][1], [[1, 0, 255], [0, 1, 1]])
    train = build_dataset("kitti_road", tmp_path, "train")
    val = build_dataset("kitti_road", tmp_path, "val")
    assert set(train.names).isdisjoint(val.names) and sorted(train.names + val.names) == sorted(full.names)
    # the last 20% frames of each category; um has 6 frames -> 1 in val
    assert val.names == ["um_000007", "umm_000004", "uu_000004"]
    assert build_dataset("kitti_road", tmp_path, "val").names == val.names  # deterministic
    with pytest.raises(DatasetError, match="training"):
        build_dataset("kitti_road", tmp_path, "testing")


# ------------------------------------------------------------------------------------------- bad data


def _segnet_tree(root: Path, n: int = 2, size: tuple[int, int] = (4, 6)) -> CamVidDataset:
    for i in range(n):
        write_rgb(root / "train" / f"f{i}.png", noise_image(*size, seed=i))
        write_gray(root / "trainannot" / f"f{i}.png", np.full(size, 3, np.uint8))
    return CamVidDataset(root, "train")


def test_corrupt_image_names_file(tmp_path):
    ds = _segnet_tree(tmp_path)
    bad = tmp_path / "train" / "f1.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert str(bad) in str(err.value) and "cannot decode" in str(err.value)
    ds[0]  # others still load


def test_truncated_label_names_file(tmp_path):
    ds = _segnet_tree(tmp_path, size=(64, 64))
    lbl = tmp_path / "trainannot" / "f0.png"
    write_gray(lbl, np.random.default_rng(0).integers(0, 11, (64, 64), dtype=np.uint8))
    lbl.write_bytes(lbl.read_bytes()[: 60])
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert str(lbl) in str(err.value)


def test_size_mismatch_names_both_files(tmp_path):
    ds = _segnet_tree(tmp_path)
    lbl = write_gray(tmp_path / "trainannot" / "f1.png", np.full((5, 6), 3, np.uint8))
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert str(lbl) in str(err.value) and str(tmp_path / "train" / "f1.png") in str(err.value)


@pytest.mark.parametrize("value", [12, 200])
def test_label_value_out_of_range(tmp_path, value):
    ds = _segnet_tree(tmp_path)
    raw = np.full((4, 6), 3, np.uint8)
    raw[0, 0] = value
    lbl = write_gray(tmp_path / "trainannot" / "f0.png", raw)
    with pytest.raises(DatasetError) as err:
        ds.load(0)
    assert str(lbl) in str(err.value) and str(value) in str(err.value)


def test_colour_index_label_is_refused(tmp_path):
    ds = _segnet_tree(tmp_path)
    lbl = write_rgb(tmp_path / "trainannot" / "f0.png", noise_image(4, 6))
    with pytest.raises(DatasetError, match="single-channel") as err:
        ds[0]
    assert str(lbl) in str(err.value)


def test_missing_pair_files_at_construction(tmp_path):
    _segnet_tree(tmp_path)
    (tmp_path / "trainannot" / "f1.png").unlink()
    write_gray(tmp_path / "trainannot" / "orphan.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(DatasetError) as err:
        CamVidDataset(tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / "train" / "f1.png") in msg and str(tmp_path / "trainannot" / "orphan.png") in msg
    # Cityscapes and KITTI too
    write_rgb(tmp_path / "leftImg8bit" / "train" / "c" / "c_000000_000001_leftImg8bit.png", noise_image(2, 2))
    (tmp_path / "gtFine" / "train" / "c").mkdir(parents=True)
    with pytest.raises(DatasetError, match="c_000000_000001_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "train")
    write_rgb(tmp_path / "training" / "image_2" / "uu_000003.png", noise_image(2, 2))
    (tmp_path / "training" / "gt_image_2").mkdir(parents=True)
    with pytest.raises(DatasetError, match="uu_road_000003.png"):
        build_dataset("kitti_road", tmp_path, "training")


def test_empty_split(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        build_dataset("camvid", tmp_path, "val")


# ---------------------------------------------------------------------------------------- transforms

# Classes with gaps, so any interpolation of ids would invent values between them.
CLASSES = (0, 3, 7, 10)
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)], np.float32)


def coded_pair(h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric block label and an image whose colour encodes each pixel's class."""
    label = np.full((h, w), CLASSES[0], np.uint8)
    label[: h // 2, w // 3:] = CLASSES[1]
    label[h // 2:, : w // 4] = CLASSES[2]
    label[h // 3: 2 * h // 3, w // 2: 3 * w // 4] = CLASSES[3]
    lut = {c: COLOURS[i] for i, c in enumerate(CLASSES)}
    image = np.stack([lut[int(v)] for v in label.ravel()]).reshape(h, w, 3).astype(np.uint8)
    return image, label


def denormalise(img: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 3, 1, 1)
    x = (img * std + mean) * 255
    return x.permute(0, 2, 3, 1).numpy() if x.ndim == 4 else x[0].permute(1, 2, 0).numpy()


def agreement(img: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of labelled pixels whose colour's nearest class colour is the mask's class."""
    rgb = denormalise(img.unsqueeze(0))[0]
    nearest = np.array(CLASSES)[np.argmin(((rgb[..., None, :] - COLOURS) ** 2).sum(-1), -1)]
    m = mask.numpy()
    keep = m != IGNORE_INDEX
    return float((nearest[keep] == m[keep]).mean())


def test_train_transform_aligned_and_nearest():
    image, label = coded_pair()
    torch.manual_seed(0)
    t = TrainTransform(crop_size=(32, 48), scale_range=(0.5, 2.0), hflip=0.5, photometric=False)
    padded = 0
    for _ in range(12):
        img, mask = t(image, label)
        assert img.dtype == torch.float32 and img.shape == (3, 32, 48)
        assert mask.dtype == torch.int64 and mask.shape == (32, 48)
        assert set(mask.unique().tolist()) <= set(CLASSES) | {IGNORE_INDEX}
        assert agreement(img, mask) > 0.9
        pad = mask == IGNORE_INDEX  # no void in the label: 255 only in the padding, which is black
        if pad.any():
            padded += 1
            assert np.abs(denormalise(img.unsqueeze(0))[0][pad.numpy()]).max() < 0.5
    assert padded > 0  # scales below 1 happened and were padded with 255
    # with photometric jitter the mask is still only original ids plus 255
    t = TrainTransform(crop_size=(32, 48), photometric=True)
    for _ in range(4):
        img, mask = t(image, label)
        assert set(mask.unique().tolist()) <= set(CLASSES) | {IGNORE_INDEX}


def test_train_transform_flip_is_joint():
    image, label = coded_pair()
    torch.manual_seed(1)
    t = TrainTransform(crop_size=label.shape, scale_range=(1.0, 1.0), hflip=1.0, photometric=False)
    img, mask = t(image, label)
    np.testing.assert_array_equal(mask.numpy(), label[:, ::-1])
    np.testing.assert_allclose(denormalise(img.unsqueeze(0))[0], image[:, ::-1], atol=1e-3)


@pytest.mark.parametrize("pipeline", ["transform", "gpu_resident"])
def test_stretch_widens_crops_as_the_network_input_squeezes_frames(pipeline):
    """A 192x320 network input on 360x480 frames draws objects 1.25x wider than tall: `stretch` trains on that
    shape. At scale 1 and stretch 2 every label column appears twice, and rows are untouched, in both pipelines."""
    image, label = coded_pair()
    h, w = label.shape
    if pipeline == "transform":
        t = TrainTransform(crop_size=(h, 2 * w), scale_range=(1.0, 1.0), hflip=0.0, photometric=False, stretch=2.0)
        img, mask = t(image, label)
    else:
        data = GpuResidentData(_Coded(1), "cpu")
        img, mask = next(data.batches(1, crop_size=(h, 2 * w), scale_range=(1.0, 1.0), hflip=0.0,
                                      photometric=False, stretch=2.0))
        img, mask = img[0], mask[0]
    np.testing.assert_array_equal(mask.numpy(), np.repeat(label, 2, axis=1))
    assert agreement(img, mask) > 0.95
    with pytest.raises(ValueError, match="stretch"):
        TrainTransform(stretch=0.0)


def test_dataset_with_transform(tmp_path):
    ds = build_dataset("camvid", write_fake_camvid(tmp_path, "train", n=2), "train",
                       transform=TrainTransform(crop_size=(32, 32)))
    img, mask = ds[1]
    assert img.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64


# ------------------------------------------------------------------------------------------- GPU path


class _Coded(torch.utils.data.Dataset):
    """n coded samples; sample i's image differs by an offset in its first row so it can be recognised."""

    def __init__(self, n: int, sizes: list[tuple[int, int]] | None = None):
        self.items = []
        for i in range(n):
            image, label = coded_pair(*(sizes[i] if sizes else (40, 56)))
            image[0, 0] = (i, i, i)
            self.items.append((image, label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_gpu_resident_batches_shapes_and_alignment():
    data = GpuResidentData(_Coded(5), "cpu")
    assert data.images.shape == (5, 3, 40, 56) and data.images.dtype == torch.uint8
    assert data.masks.shape == (5, 40, 56) and data.nbytes == 5 * 4 * 40 * 56
    g = torch.Generator().manual_seed(0)
    batches = [b for _ in range(3) for b in data.batches(2, crop_size=(32, 48), hflip=0.5, photometric=False,
                                                         generator=g)]
    assert [b[0].shape[0] for b in batches] == [2, 2, 1] * 3
    padded = False
    for img, mask in batches:
        assert img.dtype == torch.float32 and img.shape[1:] == (3, 32, 48)
        assert mask.dtype == torch.int64 and mask.shape[1:] == (32, 48)
        assert set(mask.unique().tolist()) <= set(CLASSES) | {IGNORE_INDEX}
        for k in range(img.shape[0]):
            assert agreement(img[k], mask[k]) > 0.9
        padded |= bool((mask == IGNORE_INDEX).any())
    assert padded
    img, mask = next(data.batches(5, photometric=0.4))
    assert img.shape == (5, 3, 40, 56) and set(mask.unique().tolist()) <= set(CLASSES) | {IGNORE_INDEX}
    assert torch.isfinite(img).all()


def test_gpu_resident_epochs_visit_each_sample_once():
    n = 7
    data = GpuResidentData(_Coded(n), "cpu", seed=3)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    orders = []
    for _ in range(3):
        seen = []
        for img, mask in data.batches(3, scale_range=(1.0, 1.0), hflip=0.0, photometric=False):
            raw = ((img * std + mean) * 255).round()
            seen += [int(v) for v in raw[:, 0, 0, 0]]  # identity augmentation: the marker pixel survives
            np.testing.assert_array_equal(mask[0].numpy(), coded_pair()[1])
        assert sorted(seen) == list(range(n))
        orders.append(seen)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled per epoch
    data.set_epoch(1)
    assert data.indices(1).tolist() == orders[1]
    # DistributedSampler-style shards: disjoint up to the wrap-around padding, covering the split
    shards = [GpuResidentData(_Coded(n), "cpu", rank=r, world_size=3, seed=3).indices(0).tolist() for r in range(3)]
    assert all(len(s) == 3 for s in shards)
    flat = sum(shards, [])
    assert set(flat) == set(range(n)) and len(flat) - len(set(flat)) == 2


def test_gpu_resident_mixed_sizes():
    ds = _Coded(3, sizes=[(40, 56), (20, 28), (40, 56)])
    with pytest.raises(DatasetError, match="size="):
        GpuResidentData(ds, "cpu")
    data = GpuResidentData(ds, "cpu", size=(40, 56))
    assert data.masks.shape == (3, 40, 56)
    assert set(data.masks[1].unique().tolist()) <= set(CLASSES)


def test_gpu_resident_from_dataset_and_fake_trees(tmp_path):
    ds = build_dataset("cityscapes", write_fake_cityscapes(tmp_path, "train", n=2), "train")
    data = GpuResidentData(ds, "cpu", num_threads=2)
    assert data.names == ds.names
    for i in range(2):
        np.testing.assert_array_equal(data.masks[i].numpy(), ds[i][1])


@pytest.mark.skipif(not (REAL_CAMVID / "train").is_dir(), reason="real CamVid not on this machine")
def test_real_camvid_first_sample():
    ds = build_dataset("camvid", REAL_CAMVID, "val")
    assert len(ds) == 101 and ds.layout == "segnet"
    image, mask = ds[0]
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    assert set(np.unique(mask).tolist()) <= set(range(11)) | {IGNORE_INDEX}
