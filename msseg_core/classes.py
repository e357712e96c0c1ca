"""Class names, palettes and road classes of each dataset: defined here once, used everywhere."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255
"""Label value that never counts in losses or metrics (void / unlabelled)."""


@dataclass(frozen=True)
class ClassSet:
    """What class ids mean for one dataset's label space."""

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    road: tuple[str, ...]  # drivable: what road_mask is made of
    ground: tuple[str, ...] = ()  # lie on the ground plane (road and e.g. pavement); () = the road classes

    @property
    def num_classes(self) -> int:
        return len(self.names)


# SegNet's 11-class CamVid (void = 11 on disk, mapped to IGNORE_INDEX by the loaders).
CAMVID = ClassSet(
    name="camvid",
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    road=("Road",),
    ground=("Road", "Pavement"),
)

# Cityscapes' 19 evaluation ("train id") classes.
CITYSCAPES = ClassSet(
    name="cityscapes",
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
           "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
             (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
             (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    road=("road",),
    ground=("road", "sidewalk", "terrain"),
)

# KITTI Road: road versus everything else.
KITTI_ROAD = ClassSet(
    name="kitti_road",
    names=("background", "road"),
    palette=((0, 0, 0), (255, 0, 255)),
    road=("road",),
)

CLASS_SETS: dict[str, ClassSet] = {c.name: c for c in (CAMVID, CITYSCAPES, KITTI_ROAD)}


def get_class_set(name: str) -> ClassSet:
    """Look up a dataset's classes by name, with the known names in the error."""
    try:
        return CLASS_SETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(CLASS_SETS))}") from None
