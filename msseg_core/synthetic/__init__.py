"""Synthetic driving scenes with exact per-pixel CamVid labels: a camera that needs no data set.

Why: the demo, the ROS tests and the road-grid checks need frames whose ground truth is known to the
pixel and whose geometry is known to the centimetre. Scenes are ray cast with numpy (every pixel's
ray hits the nearest of a set of analytic shapes: ground plane, boxes, cylinders, ellipsoids, discs),
so the label of every pixel is the class of exactly what its centre sees; no void pixels at all.

Geometry (REP-103 axes, the conventions of `msseg_core.ground.camera`):

* world frame: x forward along a straight, flat road, y left, z up; the ground is the plane z = 0 and
  the road is the strip |y| <= road_width / 2 (lane markings are part of Road, as in CamVid); a
  sidewalk (Pavement) of `sidewalk_width` follows on each side, then buildings; all other ground
  beyond the road (gaps between buildings, the far distance) is Pavement too.
* camera: at (x_cam, camera_y, CAMERA_HEIGHT = 1.5 m), looking along +x, pitched DOWN by
  CAMERA_PITCH_DEG = 3 degrees, no roll or yaw; pinhole, square pixels, no distortion:
  ``PinholeCamera.from_hfov(width, height, hfov_deg)`` (default HFOV 60 degrees, principal point at
  the centre), which is `SceneSequence.camera` (and `SyntheticFrame.camera`) with its pose.
  `camera_y` is the centre of the rightmost lane (right-hand traffic) plus a small per-seed offset.
* its pose: ``CameraPose(height=1.5, pitch=radians(3))`` with the base frame on
  the ground right below the camera (``SceneInfo.camera_pose()``); the road then spans
  ``SceneInfo.road_right <= y <= SceneInfo.road_left`` in that base frame for every x (parking strips,
  when a scene has them, are road too), wherever no car, cyclist or pole stands on it.

Modules: `world` (what a seed fixes and the objects of the street), `shapes` (ray-cast surfaces),
`textures` (noise and paints), `render` (one ray per pixel, lighting, camera effects).

Per seed, the scene draws: road width and lane count, sidewalk width, buildings (facades with
windows, varying heights and set-backs), trees, street lights, signs and traffic lights, fences,
parked and moving cars, pedestrians, sometimes a cyclist; sun direction and strength with cast
shadows from buildings and cars, clear or overcast sky with clouds, haze, exposure and white
balance, then sensor blur and noise. `SceneSequence` drives forward through the same world.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from msseg_core.ground.camera import PinholeCamera
from msseg_core.synthetic.render import Renderer
from msseg_core.synthetic.world import (
    BICYCLIST,
    BUILDING,
    CAMERA_HEIGHT,
    CAMERA_PITCH_DEG,
    CAR,
    DEFAULT_HFOV_DEG,
    FENCE,
    NUM_CLASSES,
    PAVEMENT,
    PEDESTRIAN,
    POLE,
    ROAD,
    SIGN,
    SKY,
    TREE,
    SceneInfo,
    World,
    scene_and_look,
)

__all__ = ["BICYCLIST", "BUILDING", "CAMERA_HEIGHT", "CAMERA_PITCH_DEG", "CAR", "DEFAULT_HFOV_DEG", "FENCE",
           "NUM_CLASSES", "PAVEMENT", "PEDESTRIAN", "POLE", "ROAD", "SIGN", "SKY", "TREE", "SceneInfo",
           "SceneSequence", "SyntheticFrame", "render_scene", "scene_info"]


@dataclass
class SyntheticFrame:
    """One rendered frame: image, exact labels and the geometry that produced them."""

    rgb: np.ndarray  # H x W x 3 uint8
    labels: np.ndarray  # H x W uint8 CamVid ids (no void)
    index: int
    time: float  # seconds since the sequence start
    info: SceneInfo
    camera: PinholeCamera  # intrinsics and mounting (base frame on the ground below the camera)


class SceneSequence:
    """Frames of a drive along one seed's street: the camera moves forward at `speed` m/s, traffic
    moves too; frame i is at time i / fps. Frames are deterministic in (seed, size, index)."""

    def __init__(self, seed: int = 0, width: int = 480, height: int = 360, fps: float = 10.0, speed: float = 8.0,
                 hfov_deg: float = DEFAULT_HFOV_DEG):
        if width < 8 or height < 8:
            raise ValueError(f"image must be at least 8 x 8, got {width} x {height}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.seed = int(seed)
        self.fps, self.speed = float(fps), float(speed)
        self.world = World(self.seed)
        self.camera = PinholeCamera.from_hfov(int(width), int(height), float(hfov_deg),
                                              pose=self.world.info.camera_pose())
        self._renderer = Renderer(self.camera)
        self._x0 = float(np.random.default_rng([self.seed, 4]).uniform(0, 1000))

    @property
    def info(self) -> SceneInfo:
        return self.world.info

    def frame(self, index: int) -> SyntheticFrame:
        t = index / self.fps
        rgb, labels = self._renderer.render(self.world, self._x0 + self.speed * t, t, index)
        return SyntheticFrame(rgb, labels, index, t, self.info, self.camera)

    def __iter__(self) -> Iterator[SyntheticFrame]:
        i = 0
        while True:
            yield self.frame(i)
            i += 1


def scene_info(seed: int) -> SceneInfo:
    """The road and camera geometry of a seed (cheap: nothing is rendered)."""
    return scene_and_look(int(seed))[0]


def render_scene(seed: int, width: int = 480, height: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """One driving scene: (H x W x 3 uint8 RGB, H x W uint8 CamVid ids). Same seed, same pixels."""
    f = SceneSequence(seed, width, height).frame(0)
    return f.rgb, f.labels
