"""Ground points for costmap layers: where a label image says ground, road or the foot of an obstacle.

One camera, no depth: every pixel is taken to see the flat ground plane z = 0 of the base frame (the
stated assumption of everything here). That holds for ground classes (road, pavement, ...) and fails for
everything that stands on the ground: a car's roof "projects" far behind the car. So, per image column
and from the bottom row up, pixels count while their class is a ground class; the first pixel of
another class is where an obstacle stands on the ground (its contact point), and the column ends there:
what lies above it is the obstacle's body or hidden behind it, which flat-ground geometry cannot place.
This is the free-space boundary of monocular driving perception ("stixels" without their height).

From one label image (decimated by `step`) this gives:
- `obstacles`: the contact points, with their class id (marking, e.g. Nav2's ObstacleLayer);
- `ground`: the ground pixels below them, with class ids; those of drivable classes are the free space
  for clearing (`drivable`);
- `organized`: one point per sampled pixel, rows x cols, NaN where the flat-ground assumption does not
  hold (above a contact point, above the horizon, beyond `max_range`): a cloud pixel-aligned with the
  labels at the same decimation, as Nav2's semantic_segmentation_layer reads one.
Points farther than `max_range` from the camera are left out (a pixel there covers metres of ground).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msseg_core.ground.camera import PinholeCamera


class GroundPointLookup:
    """The ground point (x, y, 0) in the base frame of every sampled pixel of a label image, computed once
    per camera, image size and `step`; NaN where the pixel's ray does not meet the ground within
    `max_range` of the camera. Sampled pixels are labels[::step, ::step] (pixel centres at integers)."""

    def __init__(self, camera: PinholeCamera, step: int = 4, max_range: float = 30.0):
        if step < 1 or max_range <= 0:
            raise ValueError(f"need step >= 1 and max_range > 0, got step={step}, max_range={max_range}")
        self.camera, self.step, self.max_range = camera, int(step), float(max_range)
        self.image_size = camera.size
        h, w = self.image_size
        self.rows, self.cols = -(-h // self.step), -(-w // self.step)
        v, u = np.mgrid[0:h:self.step, 0:w:self.step].astype(np.float64)
        rays = camera.rays(u, v)  # rows x cols x 3, base frame
        pose = camera.pose
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -pose.height / rays[..., 2]  # camera at z = height: where the ray reaches z = 0
        valid = np.isfinite(t) & (t > 0) & (pose.height > 0)
        x = pose.x + t * rays[..., 0]
        y = pose.y + t * rays[..., 1]
        valid &= np.hypot(x - pose.x, y - pose.y) <= self.max_range
        self.xy = np.where(valid[..., None], np.stack([x, y], axis=-1), np.nan).astype(np.float32)
        self.valid = valid

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols


@dataclass(frozen=True)
class GroundPoints:
    """One frame's points in the base frame (float32 x, y, z = 0) with uint8 class ids."""

    obstacles: np.ndarray  # N x 3
    obstacle_classes: np.ndarray  # N
    ground: np.ndarray  # M x 3: ground-class pixels in front of the first obstacle of their column
    ground_classes: np.ndarray  # M
    drivable: np.ndarray  # M bool: the ground points of drivable classes (free space)
    organized: np.ndarray  # rows x cols x 3, NaN where unknown
    organized_classes: np.ndarray  # rows x cols uint8: the sampled labels


def ground_points(labels: np.ndarray, lookup: GroundPointLookup, ground_lut: np.ndarray,
                  drivable_lut: np.ndarray) -> GroundPoints:
    """Apply the column rule (module docstring) to an H x W label image of the lookup's size.

    ground_lut / drivable_lut: 256-entry bool tables, True for class ids that lie on the ground / that a
    vehicle may drive on (drivable classes are ground classes too)."""
    labels = np.asarray(labels)
    if labels.shape != lookup.image_size:
        raise ValueError(f"labels are {labels.shape}, the lookup was built for {lookup.image_size}")
    small = np.ascontiguousarray(labels[::lookup.step, ::lookup.step])
    on_ground = ground_lut[small]
    # Row index (from the top) of the first non-ground pixel seen from the bottom of each column; -1 when
    # the whole column is ground.
    rows = small.shape[0]
    from_bottom = ~on_ground[::-1]
    hit = from_bottom.any(axis=0)
    contact = np.where(hit, rows - 1 - from_bottom.argmax(axis=0), -1)
    r = np.arange(rows)[:, None]
    below = r > contact[None, :]  # ground pixels in front of the contact point
    known = lookup.valid
    ground_mask = below & known
    obstacle_mask = (r == contact[None, :]) & known
    xy = lookup.xy

    def xyz(mask: np.ndarray) -> np.ndarray:
        pts = xy[mask]
        return np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], axis=1)

    organized = np.full((*small.shape, 3), np.nan, np.float32)
    keep = ground_mask | obstacle_mask
    organized[keep, :2] = xy[keep]
    organized[keep, 2] = 0.0
    ground_classes = small[ground_mask]
    return GroundPoints(obstacles=xyz(obstacle_mask), obstacle_classes=small[obstacle_mask],
                        ground=xyz(ground_mask), ground_classes=ground_classes,
                        drivable=drivable_lut[ground_classes], organized=organized, organized_classes=small)


def class_lut(ids: list[int] | tuple[int, ...]) -> np.ndarray:
    """A 256-entry bool table, True at `ids` (uint8 label images index it directly)."""
    lut = np.zeros(256, dtype=bool)
    lut[list(ids)] = True
    return lut


__all__ = ["GroundPointLookup", "GroundPoints", "class_lut", "ground_points"]
