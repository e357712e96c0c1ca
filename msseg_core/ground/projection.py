"""Flat-ground projection: the road mask in the image becomes a grid on the ground.

The camera model (frames, signs, distortion) is `msseg_core.ground.camera.PinholeCamera`; this module puts
a grid on the ground plane z = 0 of the camera's base frame and looks up, once per camera and grid,
the pixel every cell centre projects to, so each frame then costs one gather from the mask.

Grid convention (nav_msgs/OccupancyGrid): cell (row, col) holds ``data[row * cols + col]``; columns
run along +x (forward), rows along +y (left); the grid's origin (the outer corner of cell (0, 0))
is at (min_x, -width / 2, 0) in the base frame with identity orientation, so cell (row, col) has its
centre at ``(min_x + (col + 0.5) * res, -width / 2 + (row + 0.5) * res)``. Row 0 is the rightmost.
"""

from __future__ import annotations

import numpy as np

from msseg_core.ground.camera import PinholeCamera

FREE = 0
OCCUPIED = 100
UNKNOWN = -1


def grid_layout(resolution: float, length: float, width: float, min_x: float = 0.0
                ) -> tuple[int, int, tuple[float, float, float]]:
    """(rows, cols, origin) of the grid with these extents: whole cells, x from min_x, y centred."""
    cols = max(1, int(round((float(length) - float(min_x)) / float(resolution))))
    rows = max(1, int(round(float(width) / float(resolution))))
    return rows, cols, (float(min_x), -rows * float(resolution) / 2.0, 0.0)


class GroundGridLookup:
    """Pixel of every grid cell centre on the ground plane, computed once; `apply` maps masks to grids.

    camera: the calibrated camera and its mounting, at the size of the masks `apply` gets;
    resolution: cell size in metres; length: grid extent ahead (x from `min_x` to `length`); width:
    lateral extent (y from -width/2 to +width/2); max_range: cells whose horizontal distance from the
    camera exceeds it are unknown (far cells cover less than a pixel and depend on a perfectly flat
    ground).

    A cell is unknown (-1) when its centre lies behind the camera, outside the image (or outside the
    field of view the distortion model is valid in), beyond max_range, or the camera is not above the
    ground (no ray below the horizon meets it).
    """

    def __init__(self, camera: PinholeCamera, resolution: float = 0.2, length: float = 40.0, width: float = 20.0,
                 max_range: float = 40.0, min_x: float = 0.0):
        if resolution <= 0 or length <= min_x or width <= 0 or max_range <= 0:
            raise ValueError(f"need resolution > 0, length > min_x, width > 0, max_range > 0; got "
                             f"resolution={resolution}, length={length}, min_x={min_x}, width={width}, "
                             f"max_range={max_range}")
        self.camera = camera
        self.image_size = camera.size
        self.resolution = float(resolution)
        self.min_x = float(min_x)
        self.rows, self.cols, self.origin = grid_layout(resolution, length, width, min_x)
        self.length = self.min_x + self.cols * self.resolution
        self.width = self.rows * self.resolution
        self.max_range = float(max_range)

        xs = self.min_x + (np.arange(self.cols) + 0.5) * self.resolution
        ys = self.origin[1] + (np.arange(self.rows) + 0.5) * self.resolution
        gx, gy = np.meshgrid(xs, ys)  # rows x cols, gx varies along columns
        self.cell_x, self.cell_y = gx, gy
        pts = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
        u, v, depth = camera.project(pts)
        h, w = self.image_size
        seen = np.isfinite(u) & np.isfinite(v)
        ui = np.floor(np.where(seen, u, -1.0) + 0.5).astype(np.int64)  # nearest pixel (centres at integers)
        vi = np.floor(np.where(seen, v, -1.0) + 0.5).astype(np.int64)
        pose = camera.pose
        horizontal = np.hypot(pts[:, 0] - pose.x, pts[:, 1] - pose.y)
        valid = seen & (depth > 1e-6) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & (horizontal <= self.max_range)
        if pose.height <= 0:
            valid[:] = False  # a camera on or below the ground sees no ground plane in front of it
        self.u = u.reshape(self.rows, self.cols)
        self.v = v.reshape(self.rows, self.cols)
        self.valid = valid.reshape(self.rows, self.cols)
        self._cells = np.flatnonzero(valid)
        self._pixels = (vi[valid] * w + ui[valid]).astype(np.intp)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) = (OccupancyGrid height, width)."""
        return self.rows, self.cols

    def apply(self, road_mask: np.ndarray) -> np.ndarray:
        """H x W mask (non-zero = road) -> rows x cols int8 grid: 0 road, 100 not road, -1 unknown."""
        mask = np.asarray(road_mask)
        if mask.shape[:2] != self.image_size or mask.ndim != 2:
            raise ValueError(f"road mask is {mask.shape}, the lookup was built for {self.image_size}")
        grid = np.full(self.rows * self.cols, UNKNOWN, dtype=np.int8)
        road = mask.reshape(-1)[self._pixels] != 0
        grid[self._cells] = np.where(road, FREE, OCCUPIED).astype(np.int8)
        return grid.reshape(self.rows, self.cols)
