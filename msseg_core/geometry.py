"""Pinhole camera + flat-ground projection: the road mask in the image becomes a grid on the ground.

Frames (REP-103 / REP-105):

* base frame (e.g. ``base_link``): x forward, y left, z up; the ground is the plane z = 0.
* camera body frame: the camera's own x forward, y left, z up, placed at (x, y, height) in the base
  frame and turned by yaw (about z), then pitch (about the new y), then roll (about the new x):
  ``R_base_cam = Rz(yaw) @ Ry(pitch) @ Rx(roll)``, exactly what a URDF joint with
  ``rpy="roll pitch yaw"`` from the base frame to a ``camera_link`` (x forward) means.
* camera optical frame: z forward, x right, y down (what K projects from).

Sign conventions, because they are easy to get backwards:

* ``pitch > 0`` looks DOWN (rotation about the left-pointing y axis tips the forward axis towards -z).
* ``yaw > 0`` looks LEFT.
* ``roll > 0`` turns the camera about its forward axis so that its left side goes up: a scene point
  straight ahead on the horizon stays put, while a point on the left of the image moves DOWN in the
  image (the horizon tilts up to the right: the contents appear turned counter-clockwise).

Grid convention (nav_msgs/OccupancyGrid): cell (row, col) holds ``data[row * cols + col]``; columns
run along +x (forward), rows along +y (left); the grid's origin (the outer corner of cell (0, 0))
is at (min_x, -width / 2, 0) in the base frame with identity orientation, so cell (row, col) has its
centre at ``(min_x + (col + 0.5) * res, -width / 2 + (row + 0.5) * res)``. Row 0 is the rightmost.

The projection of every cell centre is computed once per camera/pose/grid (``GroundGridLookup``);
each frame then costs one gather from the mask (``apply``), no Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FREE = 0
OCCUPIED = 100
UNKNOWN = -1

# Optical frame axes expressed in the camera body frame (columns: optical x, y, z).
_R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraPose:
    """Camera mounting in the base frame: metres and radians (see the module docstring for signs)."""

    x: float = 0.0
    y: float = 0.0
    height: float = 1.5
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0

    def rotation(self) -> np.ndarray:
        """R_base_body: camera body axes (x fwd, y left, z up) expressed in the base frame."""
        cr, sr = np.cos(self.roll), np.sin(self.roll)
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
        ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
        return rz @ ry @ rx

    def optical_rotation(self) -> np.ndarray:
        """R_base_optical: optical axes (x right, y down, z forward) expressed in the base frame."""
        return self.rotation() @ _R_BODY_OPTICAL

    @property
    def translation(self) -> np.ndarray:
        return np.array([self.x, self.y, self.height], dtype=np.float64)


def intrinsics_matrix(K: Sequence[float] | np.ndarray) -> np.ndarray:
    """Accept a 3x3 matrix, its 9 row-major values (CameraInfo.k) or (fx, fy, cx, cy)."""
    k = np.asarray(K, dtype=np.float64).reshape(-1)
    if k.size == 4:
        fx, fy, cx, cy = k
        k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    if k.size != 9:
        raise ValueError(f"K must be 3x3, 9 values or (fx, fy, cx, cy); got {k.size} values")
    k = k.reshape(3, 3)
    if not (k[0, 0] > 0 and k[1, 1] > 0):
        raise ValueError(f"K needs fx > 0 and fy > 0 (an uncalibrated CameraInfo has K = 0); got {k.tolist()}")
    return k


def _distort(x: np.ndarray, y: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV plumb_bob / rational_polynomial distortion of normalised coordinates."""
    d = np.zeros(8)
    d[: min(8, dist.size)] = dist[:8]
    k1, k2, p1, p2, k3, k4, k5, k6 = d
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def project_points(points: np.ndarray, K: Sequence[float] | np.ndarray, pose: CameraPose,
                   dist: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N x 3 base-frame points -> (u, v, depth): pixel coordinates (pixel centres at integers, the
    CameraInfo / OpenCV convention) and the depth along the optical axis (<= 0: behind the camera)."""
    k = intrinsics_matrix(K)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    p_opt = (pts - pose.translation) @ pose.optical_rotation()  # row-vector form of R^T (p - t)
    z = p_opt[:, 2]
    safe_z = np.where(z > 1e-9, z, 1.0)
    x, y = p_opt[:, 0] / safe_z, p_opt[:, 1] / safe_z
    if dist is not None and np.any(np.asarray(dist, dtype=np.float64) != 0):
        x, y = _distort(x, y, np.asarray(dist, dtype=np.float64).reshape(-1))
    u = k[0, 0] * x + k[0, 1] * y + k[0, 2]
    v = k[1, 1] * y + k[1, 2]
    return u, v, z


def pixel_rays(u: np.ndarray, v: np.ndarray, K: Sequence[float] | np.ndarray, pose: CameraPose) -> np.ndarray:
    """Directions (N x 3, base frame, not normalised) of the rays through pixels (no distortion)."""
    k = intrinsics_matrix(K)
    y = (np.asarray(v, dtype=np.float64) - k[1, 2]) / k[1, 1]
    x = (np.asarray(u, dtype=np.float64) - k[0, 2] - k[0, 1] * y) / k[0, 0]
    d_opt = np.stack([x, y, np.ones_like(x)], axis=-1)
    return d_opt @ pose.optical_rotation().T


def horizon_row(K: Sequence[float] | np.ndarray, pose: CameraPose, u: float | None = None) -> float:
    """Image row of the horizon at column u (default cx): rows above it never see the ground."""
    k = intrinsics_matrix(K)
    u = k[0, 2] if u is None else u
    # A ray (x, y, 1) in optical coords is horizontal when its base-frame z component is 0.
    r = pose.optical_rotation()[2]  # base z of optical x, y, z
    xn = (u - k[0, 2]) / k[0, 0]
    if abs(r[1]) < 1e-12:
        return float("nan")
    yn = -(r[0] * xn + r[2]) / r[1]
    return float(k[1, 1] * yn + k[1, 2])


class GroundGridLookup:
    """Pixel of every grid cell centre on the ground plane, computed once; `apply` maps masks to grids.

    K: intrinsics (see `intrinsics_matrix`); image_size: (height, width) of the masks `apply` gets;
    pose: camera mounting; resolution: cell size in metres; length: grid extent ahead (x from
    `min_x` to `length`); width: lateral extent (y from -width/2 to +width/2); max_range: cells whose
    horizontal distance from the camera exceeds it are unknown (far cells cover less than a pixel and
    depend on a perfectly flat ground); dist: optional distortion coefficients of a raw image.

    A cell is unknown (-1) when its centre lies behind the camera, outside the image, beyond
    max_range, or the camera is not above the ground (no ray below the horizon meets it).
    """

    def __init__(self, K: Sequence[float] | np.ndarray, image_size: Sequence[int], pose: CameraPose,
                 resolution: float = 0.2, length: float = 40.0, width: float = 20.0,
                 max_range: float = 40.0, min_x: float = 0.0, dist: Sequence[float] | None = None):
        if resolution <= 0 or length <= min_x or width <= 0 or max_range <= 0:
            raise ValueError(f"need resolution > 0, length > min_x, width > 0, max_range > 0; got "
                             f"resolution={resolution}, length={length}, min_x={min_x}, width={width}, "
                             f"max_range={max_range}")
        self.K = intrinsics_matrix(K)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width) > 0, got {tuple(image_size)}")
        self.pose = pose
        self.resolution = float(resolution)
        self.min_x = float(min_x)
        self.cols = max(1, int(round((float(length) - self.min_x) / self.resolution)))
        self.rows = max(1, int(round(float(width) / self.resolution)))
        self.length = self.min_x + self.cols * self.resolution
        self.width = self.rows * self.resolution
        self.max_range = float(max_range)
        self.origin = (self.min_x, -self.width / 2.0, 0.0)

        xs = self.min_x + (np.arange(self.cols) + 0.5) * self.resolution
        ys = self.origin[1] + (np.arange(self.rows) + 0.5) * self.resolution
        gx, gy = np.meshgrid(xs, ys)  # rows x cols, gx varies along columns
        self.cell_x, self.cell_y = gx, gy
        pts = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
        u, v, depth = project_points(pts, self.K, pose, dist)
        h, w = self.image_size
        ui = np.floor(u + 0.5).astype(np.int64)  # nearest pixel (pixel centres at integers)
        vi = np.floor(v + 0.5).astype(np.int64)
        horizontal = np.hypot(pts[:, 0] - pose.x, pts[:, 1] - pose.y)
        valid = (depth > 1e-6) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & (horizontal <= self.max_range)
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

    def ground_points(self, cells: np.ndarray | None = None) -> np.ndarray:
        """Centres (N x 2, base frame x, y) of the cells selected by a rows x cols boolean array."""
        sel = np.ones(self.shape, bool) if cells is None else np.asarray(cells, bool)
        return np.stack([self.cell_x[sel], self.cell_y[sel]], axis=1)
