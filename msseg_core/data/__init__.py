"""Datasets (CamVid, Cityscapes, KITTI Road, your own "folder"), joint image/mask augmentation, and a
GPU-resident data path.

`build_dataset(name, root, split)` is the entry point; samples are (uint8 HxWx3 RGB, uint8 HxW class ids
with 255 = ignore). The transforms (torchvision) and the GPU path are imported on first use, so reading
a dataset does not pay for importing torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

from msseg_core.classes import CAMVID, CITYSCAPES, IGNORE_INDEX, KITTI_ROAD, ClassSet
from msseg_core.data.datasets import (
    DATASETS,
    CamVidDataset,
    CityscapesDataset,
    DatasetError,
    KittiRoadDataset,
    SegmentationDataset,
    build_dataset,
)
from msseg_core.data.folder import FolderDataset, check_folder

# Registered here, not in datasets.py: folder.py builds on datasets.py (the package runs this before any
# of its modules, so build_dataset always knows "folder").
DATASETS.setdefault("folder", FolderDataset)

_LAZY = {
    "TrainTransform": "msseg_core.data.transforms",
    "GpuResidentData": "msseg_core.data.gpu",
    "split_bytes": "msseg_core.data.gpu",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAMVID", "CITYSCAPES", "DATASETS", "IGNORE_INDEX", "KITTI_ROAD", "CamVidDataset", "CityscapesDataset",
    "ClassSet", "DatasetError", "FolderDataset", "KittiRoadDataset", "SegmentationDataset", "build_dataset",
    "check_folder", *_LAZY,
]
