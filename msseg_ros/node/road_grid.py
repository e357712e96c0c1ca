"""The road grid of one camera: CameraInfo + mounting parameters -> GroundGridLookup -> grid cells.

The camera model lives in `msseg_core.ground.camera`, the projection in `msseg_core.ground.projection` and
the mask clean-up in `msseg_core.ground.road_mask`; this module turns the node's parameters and a
CameraInfo into their inputs and keeps the lookup (`msseg_ros.transport.messages.occupancy_grid` wraps
the cells in a nav_msgs/OccupancyGrid). No rclpy or message import here: the node's core runs and is
tested without ROS. The lookup is rebuilt only when the camera model, the mask size or a geometry
parameter changes, so each frame costs one gather. A CameraInfo the camera model cannot use
(uncalibrated, an unknown distortion model) disables the grid with a reason in `camera_error` rather
than producing a wrong one.

Wiring into a node (parameters are run-time changeable; see docs/planners.md)::

    self.road_grid = RoadGridBuilder(**declare_road_grid_parameters(self))   # node/parameters.py
    self.road_grid_pub = self.create_publisher(OccupancyGrid, topics.ROAD_GRID, qos)
    # camera_info callback:    self.road_grid.update_camera_info(msg)
    # validate callback:       reason = self.road_grid.check_params(**road_updates)
    # post-set callback:       self.road_grid.set_params(**road_updates)
    #   (road_updates = {p.name: p.value for p in params if p.name in ROAD_GRID_DEFAULTS})
    # per frame, when road_grid has subscribers: compute road_mask (+ confidence when
    # road_min_confidence > 0), then
    #   grid = self.road_grid.compute(result["road_mask"], result.get("confidence"))
    #   if grid is not None: self.road_grid_pub.publish(occupancy_grid(grid, msg.header.stamp))
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from msseg_core.ground.camera import CameraError, CameraPose, PinholeCamera
from msseg_core.ground.points import GroundPointLookup, GroundPoints, ground_points
from msseg_core.ground.projection import GroundGridLookup
from msseg_core.ground.road_mask import refine_road_mask


def _param(default: Any, description: str) -> Any:
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class RoadGridParams:
    """Node parameters of the road output; names are the ROS parameter names."""

    road_min_confidence: float = _param(0.0, "road pixels also need this summed road probability (0 = argmax only)")
    road_cleanup_kernel: int = _param(5, "morphological close+open kernel in pixels for the road grid input (0 = off)")
    road_ego_only: bool = _param(False, "keep only the road connected to the bottom centre of the image")
    camera_x: float = _param(0.0, "camera position ahead of grid_frame origin [m] (REP-103: x forward)")
    camera_y: float = _param(0.0, "camera position left of grid_frame origin [m]")
    camera_height: float = _param(1.5, "camera height above the ground plane [m]")
    camera_roll: float = _param(0.0, "camera roll [rad], positive = left side up")
    camera_pitch: float = _param(0.0, "camera pitch [rad], positive = looking down")
    camera_yaw: float = _param(0.0, "camera yaw [rad], positive = looking left")
    camera_rectified: bool = _param(False, "the images are rectified (e.g. image_rect): project with camera_info's "
                                           "P and R, no distortion")
    grid_frame: str = _param("base_footprint", "frame_id of road_grid: the ground-level base frame (REP-105) the "
                                               "camera pose is given in")
    grid_resolution: float = _param(0.2, "road_grid cell size [m]")
    grid_min_x: float = _param(0.0, "road_grid starts this far ahead of grid_frame's origin [m]; negative: behind "
                                    "it (rear and side cameras)")
    grid_length: float = _param(30.0, "road_grid ends this far ahead of grid_frame's origin [m] (x from grid_min_x "
                                      "to grid_length)")
    grid_width: float = _param(20.0, "road_grid lateral extent, centred on grid_frame [m]")
    grid_max_range: float = _param(30.0, "cells (and ground points) farther than this from the camera are unknown [m]")

    def check(self) -> str | None:
        """A message saying what is wrong, or None when the values are usable."""
        if not 0.0 <= self.road_min_confidence <= 1.0:
            return f"road_min_confidence must be in [0, 1], got {self.road_min_confidence}"
        if self.road_cleanup_kernel < 0 or self.road_cleanup_kernel > 101:
            return f"road_cleanup_kernel must be 0 (off) .. 101 pixels, got {self.road_cleanup_kernel}"
        if not self.grid_frame:
            return "grid_frame must not be empty"
        for name in ("grid_resolution", "grid_width", "grid_max_range"):
            if not getattr(self, name) > 0:
                return f"{name} must be > 0, got {getattr(self, name)}"
        if not self.grid_length > self.grid_min_x:
            return (f"grid_length ({self.grid_length:g} m) must be greater than grid_min_x ({self.grid_min_x:g} m): "
                    "the grid spans x from grid_min_x to grid_length")
        if self.grid_resolution > min(self.grid_length - self.grid_min_x, self.grid_width):
            return f"grid_resolution ({self.grid_resolution:g} m) is larger than the grid itself"
        cells = ((self.grid_length - self.grid_min_x) / self.grid_resolution) * (self.grid_width / self.grid_resolution)
        if cells > 25_000_000:
            return f"grid of {cells:.0f} cells is too large; raise grid_resolution or shrink the grid"
        if not -np.pi / 2 < self.camera_pitch < np.pi / 2 or not -np.pi / 2 < self.camera_roll < np.pi / 2:
            return "camera_pitch and camera_roll must be within (-pi/2, pi/2) radians"
        return None

    @property
    def geometry(self) -> GridGeometry:
        return GridGeometry(self.grid_resolution, self.grid_min_x, self.grid_length, self.grid_width)

    @property
    def pose(self) -> CameraPose:
        return CameraPose(x=self.camera_x, y=self.camera_y, height=self.camera_height, roll=self.camera_roll,
                          pitch=self.camera_pitch, yaw=self.camera_yaw)


@dataclass(frozen=True)
class GridGeometry:
    """Where a grid lies on the ground of its frame: cell size, x from min_x to length, y across width."""

    resolution: float
    min_x: float
    length: float
    width: float


@dataclass(frozen=True)
class RoadGrid:
    """One frame's grid: rows x cols int8 cells (0 road, 100 not road, -1 unknown; row = +y, col = +x, as
    nav_msgs/OccupancyGrid), the cell size [m] and the outer corner of cell (0, 0) in `frame_id`."""

    cells: np.ndarray
    resolution: float
    origin: tuple[float, float, float]
    frame_id: str


ROAD_GRID_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RoadGridParams)}
ROAD_GRID_DESCRIPTIONS: dict[str, str] = {f.name: f.metadata["description"] for f in fields(RoadGridParams)}

_GEOMETRY_KEYS = {"camera_x", "camera_y", "camera_height", "camera_roll", "camera_pitch", "camera_yaw",
                  "grid_resolution", "grid_min_x", "grid_length", "grid_width", "grid_max_range"}


class RoadGridBuilder:
    """Turns road masks into OccupancyGrids; owns the lookup and rebuilds it only when needed.

    Thread-safe: parameters and CameraInfo may change (executor threads) while a worker builds grids."""

    def __init__(self, **params: Any):
        self._lock = threading.Lock()
        self.params = RoadGridParams()
        self.camera: PinholeCamera | None = None  # at the CameraInfo's resolution, without the mounting
        self.camera_error: str | None = "no CameraInfo received yet"
        self._info: Any = None  # the latest CameraInfo: camera_rectified changes how it is read
        self.lookup: GroundGridLookup | None = None  # this camera's own grid
        self.lookup_builds = 0
        self._other_lookups: dict[tuple, GroundGridLookup | GroundPointLookup] = {}  # fused grid, ground points
        if params:
            self.set_params(**params)

    # -- inputs ----------------------------------------------------------------------------
    def check_params(self, **params: Any) -> str | None:
        """Validate a (partial) update against the current values without applying it: for a node's
        set-parameters callback. Returns the reason it is refused, or None."""
        unknown = set(params) - set(ROAD_GRID_DEFAULTS)
        if unknown:
            return f"unknown road grid parameters {sorted(unknown)}"
        try:
            candidate = replace(self.params, **_coerce(params))
        except (TypeError, ValueError) as exc:
            return str(exc)
        return candidate.check()

    def set_params(self, **params: Any) -> bool:
        """Apply a (partial) update; returns True if the lookup must be rebuilt. ValueError if invalid."""
        unknown = set(params) - set(ROAD_GRID_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown road grid parameters {sorted(unknown)}")
        with self._lock:
            new = replace(self.params, **_coerce(params))
            error = new.check()
            if error:
                raise ValueError(error)
            geometry_changed = any(getattr(new, k) != getattr(self.params, k) for k in _GEOMETRY_KEYS)
            rectified_changed = new.camera_rectified != self.params.camera_rectified
            self.params = new
            if geometry_changed:
                self.lookup = None
                self._other_lookups.clear()
            if rectified_changed and self._info is not None:
                self._load_camera(self._info)
            return geometry_changed or rectified_changed

    def update_camera_info(self, msg: Any) -> bool:
        """Take a CameraInfo; returns True when the camera model (or why there is none) changed; the
        lookup is then rebuilt lazily on the next frame. A CameraInfo the model cannot use disables the
        grid, with the reason in `camera_error`."""
        with self._lock:
            self._info = msg
            return self._load_camera(msg)

    def _load_camera(self, msg: Any) -> bool:
        """(Lock held.) The camera of `msg` as the parameters say; True if it or the error changed."""
        try:
            camera, error = PinholeCamera.from_camera_info(msg, rectified=self.params.camera_rectified), None
        except CameraError as exc:
            camera, error = None, str(exc)
        if camera == self.camera and error == self.camera_error:
            return False
        self.camera, self.lookup, self.camera_error = camera, None, error
        self._other_lookups.clear()
        return True

    @property
    def ready(self) -> bool:
        """Whether a usable CameraInfo has arrived."""
        return self.camera is not None

    # -- per frame -------------------------------------------------------------------------
    def refine(self, road_mask: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """Confidence threshold, clean-up and ego component as the parameters say (255 = road)."""
        return _refine(self.params, road_mask, confidence)

    def _snapshot(self, size: tuple[int, int]) -> tuple[GroundGridLookup | None, RoadGridParams]:
        """The lookup for masks of this size (built if needed) and the parameters it was built with."""
        with self._lock:
            if self.camera is None:
                return None, self.params
            if self.lookup is None or self.lookup.image_size != size:
                p = self.params
                self.lookup = self._grid_lookup(size, p.geometry)
                self.lookup_builds += 1
            return self.lookup, self.params

    def _grid_lookup(self, size: tuple[int, int], g: GridGeometry) -> GroundGridLookup:
        """(Lock held, camera known.) The lookup of this camera at this mask size onto grid `g`."""
        camera = self.camera.scaled_to(*size).with_pose(self.params.pose)
        return GroundGridLookup(camera, resolution=g.resolution, length=g.length, width=g.width,
                                max_range=self.params.grid_max_range, min_x=g.min_x)

    def _cached(self, key: tuple, build) -> tuple[Any, RoadGridParams] | tuple[None, RoadGridParams]:
        with self._lock:
            if self.camera is None:
                return None, self.params
            lookup = self._other_lookups.get(key)
            if lookup is None:
                if len(self._other_lookups) > 8:  # sizes or geometries come and go: keep the recent ones
                    self._other_lookups.clear()
                lookup = self._other_lookups[key] = build()
                self.lookup_builds += 1
            return lookup, self.params

    def cells_on(self, road_mask: np.ndarray, geometry: GridGeometry) -> np.ndarray | None:
        """A refined road mask (`refine`) as cells of another grid in the same frame (the vehicle's fused
        grid); None before a usable CameraInfo."""
        mask = np.asarray(road_mask)
        size = mask.shape[:2]
        lookup, _ = self._cached(("grid", size, geometry), lambda: self._grid_lookup(size, geometry))
        return None if lookup is None else lookup.apply(mask)

    def sees_any_cell_of(self, geometry: GridGeometry, size: tuple[int, int]) -> bool | None:
        """Whether this camera's view covers any cell of `geometry` (None before a CameraInfo)."""
        lookup, _ = self._cached(("grid", size, geometry), lambda: self._grid_lookup(size, geometry))
        return None if lookup is None else bool(lookup.valid.any())

    def points(self, labels: np.ndarray, ground_lut: np.ndarray, drivable_lut: np.ndarray,
               step: int) -> tuple[GroundPoints, str] | None:
        """The frame's ground points (msseg_core.ground.points) and the frame they are in (grid_frame);
        None before a usable CameraInfo."""
        labels = np.asarray(labels)
        size = labels.shape[:2]

        def build() -> GroundPointLookup:
            camera = self.camera.scaled_to(*size).with_pose(self.params.pose)
            return GroundPointLookup(camera, step=step, max_range=self.params.grid_max_range)

        lookup, params = self._cached(("points", size, step), build)
        if lookup is None:
            return None
        return ground_points(labels, lookup, ground_lut, drivable_lut), params.grid_frame

    def grid(self, road_mask: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray | None:
        """rows x cols int8 grid (0 road, 100 not road, -1 unknown), or None before a CameraInfo."""
        result = self._grid(road_mask, confidence)
        return None if result is None else result[0]

    def _grid(self, road_mask: np.ndarray, confidence: np.ndarray | None, refined: bool = False
              ) -> tuple[np.ndarray, GroundGridLookup, RoadGridParams] | None:
        mask = np.asarray(road_mask)
        lookup, params = self._snapshot(mask.shape[:2])
        if lookup is None:
            return None
        return lookup.apply(mask if refined else _refine(params, mask, confidence)), lookup, params

    def compute(self, road_mask: np.ndarray, confidence: np.ndarray | None = None,
                refined: bool = False) -> RoadGrid | None:
        """The grid of one frame in `grid_frame`; None before a usable CameraInfo. `confidence` (the node's
        uint8 output) is needed when road_min_confidence > 0; `refined=True` says `road_mask` already went
        through `refine` (the node publishes that mask too)."""
        result = self._grid(road_mask, confidence, refined)
        if result is None:
            return None
        cells, lookup, params = result
        return RoadGrid(cells, lookup.resolution, lookup.origin, params.grid_frame)

    def refine_with(self, params: RoadGridParams, road_mask: np.ndarray,
                    confidence: np.ndarray | None = None) -> np.ndarray:
        """`refine` with a snapshot of the parameters (one consistent set per frame)."""
        return _refine(params, road_mask, confidence)


def _refine(p: RoadGridParams, road_mask: np.ndarray, confidence: np.ndarray | None) -> np.ndarray:
    return refine_road_mask(road_mask, kernel_size=p.road_cleanup_kernel, ego_only=p.road_ego_only,
                            confidence=confidence if p.road_min_confidence > 0 else None,
                            min_confidence=p.road_min_confidence)


def _coerce(params: dict[str, Any]) -> dict[str, Any]:
    """ROS parameters arrive as int where a float is declared (e.g. `camera_pitch: 0`): fix types."""
    out = {}
    for name, value in params.items():
        default = ROAD_GRID_DEFAULTS[name]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError(f"{name} must be an integer, got {value!r}")
            value = int(value)
        elif isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str):
            value = str(value)
        out[name] = value
    return out
