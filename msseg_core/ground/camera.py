"""The one pinhole camera of the package: intrinsics, distortion and mounting pose; points to pixels
and pixels to rays. In the spirit of image_geometry's PinholeCameraModel, without ROS: `from_camera_info`
reads the fields of any sensor_msgs/CameraInfo (rclpy or rosbags), honouring ROI and binning.

Frames (REP-103 / REP-105):

* base frame (e.g. ``base_footprint``): x forward, y left, z up; the ground is the plane z = 0.
* camera body frame: the camera's own x forward, y left, z up, placed at (x, y, height) in the base
  frame and turned by yaw (about z), then pitch (about the new y), then roll (about the new x):
  ``R_base_cam = Rz(yaw) @ Ry(pitch) @ Rx(roll)``, exactly what a URDF joint with
  ``rpy="roll pitch yaw"`` from the base frame to a ``camera_link`` (x forward) means.
* camera optical frame: z forward, x right, y down (what K projects from).

Sign conventions, because they are easy to get backwards: ``pitch > 0`` looks DOWN, ``yaw > 0`` looks
LEFT, ``roll > 0`` raises the camera's left side (a point on the left of the image moves down).

Pixels: centres at integers (the CameraInfo / OpenCV convention); resizing keeps that (`scaled_to`).

Distortion: ``plumb_bob`` (k1 k2 p1 p2 k3) and ``rational_polynomial`` (k1 k2 p1 p2 k3 k4 k5 k6)
through ``cv2.projectPoints``, ``equidistant`` (fisheye k1..k4) through ``cv2.fisheye``; coefficients
that are all zero mean no distortion whatever the model's name. Any other model raises `CameraError`:
a grid built with the wrong model would be silently wrong. Rectified images (``rectified=True``)
are projected with R and P (whose focal lengths may differ from K's) and never distorted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import cv2
import numpy as np

DISTORTION_MODELS: dict[str, int] = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
"""Supported distortion models and their number of coefficients."""
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Optical frame axes expressed in the camera body frame (columns: optical x, y, z).
_R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


class CameraError(ValueError):
    """A calibration the camera model cannot use: uncalibrated, no image size, unknown distortion."""


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


def _floats(values: Any, n: int | None = None, name: str = "") -> tuple[float, ...]:
    out = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    if n is not None and len(out) != n:
        raise CameraError(f"{name} needs {n} values, got {len(out)}")
    return out


def _pixel_transform(sx: float, sy: float, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """Pixel (u, v) of an image -> pixel of its window starting at (x0, y0), scaled by (sx, sy),
    pixel centres kept at integers: u' = (u - x0 + 0.5) * sx - 0.5."""
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PinholeCamera:
    """A calibrated camera for images of `width` x `height` pixels, mounted at `pose`.

    K (3x3), R (3x3) and P (3x4) are stored row-major as in CameraInfo; P defaults to [K | 0]."""

    width: int
    height: int
    K: tuple[float, ...]
    D: tuple[float, ...] = ()
    distortion_model: str = "plumb_bob"
    R: tuple[float, ...] = _IDENTITY
    P: tuple[float, ...] = ()
    rectified: bool = False
    pose: CameraPose = field(default_factory=CameraPose)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields once
        set_(self, "K", _floats(self.K, 9, "K"))
        set_(self, "D", _floats(self.D) if any(np.asarray(self.D, dtype=np.float64).reshape(-1)) else ())
        set_(self, "R", _floats(self.R, 9, "R"))
        k = np.asarray(self.K).reshape(3, 3)
        set_(self, "P", _floats(self.P, 12, "P") if len(self.P) else _floats(np.c_[k, np.zeros(3)]))
        if self.width < 1 or self.height < 1:
            raise CameraError(f"the camera has no image size ({self.width} x {self.height})")
        matrix, what = (self.projection[:, :3], "P") if self.rectified else (k, "K")
        if not (matrix[0, 0] > 0 and matrix[1, 1] > 0):
            raise CameraError(f"{what} needs fx > 0 and fy > 0 (an uncalibrated CameraInfo has {what} = 0); "
                              f"got {matrix.tolist()}")
        if self.distorted:
            expected = DISTORTION_MODELS.get(self.distortion_model)
            if expected is None:
                raise CameraError(f"distortion model {self.distortion_model!r} is not supported (supported: "
                                  f"{', '.join(DISTORTION_MODELS)}); if the images are rectified, say so "
                                  f"(camera_rectified)")
            if len(self.D) > expected:
                raise CameraError(f"{self.distortion_model} has {expected} coefficients, got {len(self.D)}")

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_hfov(cls, width: int, height: int, hfov_deg: float = 60.0, pose: CameraPose | None = None
                  ) -> PinholeCamera:
        """An ideal camera: square pixels, principal point at the image centre, focal length from the
        horizontal field of view, no distortion (for sources that publish no calibration)."""
        if width < 1 or height < 1 or not 0.0 < hfov_deg < 180.0:
            raise CameraError(f"need width, height >= 1 and 0 < hfov < 180, got {width}x{height}, {hfov_deg}")
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        k = (f, 0.0, (width - 1) / 2.0, 0.0, f, (height - 1) / 2.0, 0.0, 0.0, 1.0)
        return cls(int(width), int(height), k, pose=pose or CameraPose())

    @classmethod
    def from_camera_info(cls, msg: Any, rectified: bool = False, pose: CameraPose | None = None) -> PinholeCamera:
        """The camera of a sensor_msgs/CameraInfo (any implementation with its field names), for the
        images it describes: the ROI window (full-resolution pixels) and binning applied to K and P."""
        width, height = int(msg.width), int(msg.height)
        roi = msg.roi
        x0 = y0 = 0.0
        if roi.width and roi.height:
            width, height, x0, y0 = int(roi.width), int(roi.height), float(roi.x_offset), float(roi.y_offset)
        bx, by = max(1, int(msg.binning_x)), max(1, int(msg.binning_y))
        if width < 1 or height < 1:
            raise CameraError(f"CameraInfo has no image size ({msg.width} x {msg.height})")
        a = _pixel_transform(1.0 / bx, 1.0 / by, x0, y0)
        k = a @ np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        p = a @ np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        r = np.asarray(msg.r, dtype=np.float64).reshape(-1)
        if rectified and not p.any():
            raise CameraError("rectified images need CameraInfo.p (P needs fx > 0 and fy > 0); it is all zero")
        return cls(width // bx, height // by, _floats(k), _floats(msg.d), str(msg.distortion_model),
                   _floats(r) if r.any() else _IDENTITY, _floats(p) if p.any() else (), rectified,
                   pose or CameraPose())

    def camera_info_fields(self) -> dict[str, Any]:
        """The CameraInfo fields of this camera (width, height, distortion_model, d, k, r, p), as lists."""
        return {"width": self.width, "height": self.height, "distortion_model": self.distortion_model,
                "d": list(self.D) or [0.0] * DISTORTION_MODELS.get(self.distortion_model, 5),
                "k": list(self.K), "r": list(self.R), "p": list(self.P)}

    def scaled_to(self, height: int, width: int) -> PinholeCamera:
        """The same camera for its images resized to width x height (pixel-centre convention kept)."""
        if (height, width) == self.size:
            return self
        a = _pixel_transform(width / self.width, height / self.height)
        return replace(self, width=int(width), height=int(height), K=_floats(a @ self.intrinsics),
                       P=_floats(a @ self.projection))

    def with_pose(self, pose: CameraPose) -> PinholeCamera:
        return replace(self, pose=pose)

    # -- properties -------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(height, width), as numpy shapes."""
        return self.height, self.width

    @property
    def intrinsics(self) -> np.ndarray:
        """K as a 3x3 matrix."""
        return np.asarray(self.K).reshape(3, 3)

    @property
    def projection(self) -> np.ndarray:
        """P as a 3x4 matrix."""
        return np.asarray(self.P).reshape(3, 4)

    @property
    def distorted(self) -> bool:
        """Whether projection applies distortion (not for rectified images or all-zero coefficients)."""
        return not self.rectified and any(self.D)

    def _to_camera(self) -> np.ndarray:
        """Base-frame directions -> the frame the pixel matrix projects from (row-vector form)."""
        rot = self.pose.optical_rotation()
        return rot @ np.asarray(self.R).reshape(3, 3).T if self.rectified else rot

    def _pixel_matrix(self) -> np.ndarray:
        return self.projection[:, :3] if self.rectified else self.intrinsics

    # -- projection -------------------------------------------------------------------------------
    def project(self, points: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N x 3 base-frame points -> (u, v, depth): pixel coordinates and the depth along the optical
        axis. u and v are NaN for points not in front of the camera (depth <= 0) and, with distortion,
        beyond the angle where the distortion polynomial folds back (it is only valid inside the field
        of view it was calibrated on; outside, it would put far-off points inside the image)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        p_cam = (pts - self.pose.translation) @ self._to_camera()
        depth = p_cam[:, 2]
        front = depth > 1e-9
        u = np.full(len(pts), np.nan)
        v = np.full(len(pts), np.nan)
        if self.rectified:
            uvw = np.c_[p_cam[front], np.ones(int(front.sum()))] @ self.projection.T
            u[front], v[front] = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
            return u, v, depth
        xy = p_cam[front, :2] / depth[front, None]
        if self.distorted:
            inside = np.hypot(xy[:, 0], xy[:, 1]) < self._max_radius
            front[front] = inside
            xy = self._distort(xy[inside])
        k = self.intrinsics
        u[front] = k[0, 0] * xy[:, 0] + k[0, 1] * xy[:, 1] + k[0, 2]
        v[front] = k[1, 1] * xy[:, 1] + k[1, 2]
        return u, v, depth

    def _coefficients(self) -> np.ndarray:
        d = np.zeros(DISTORTION_MODELS[self.distortion_model])
        d[: len(self.D)] = self.D
        return d

    def _distort(self, xy: np.ndarray, inverse: bool = False) -> np.ndarray:
        """Ideal normalised coordinates -> distorted ones by OpenCV's model (inverse: OpenCV's iterative
        undistortion, distorted -> ideal)."""
        if len(xy) == 0:
            return xy
        xy = np.ascontiguousarray(xy, dtype=np.float64).reshape(-1, 1, 2)  # OpenCV misreads strided views
        d, eye = self._coefficients(), np.eye(3)
        if self.distortion_model == "equidistant":
            out = cv2.fisheye.undistortPoints(xy, eye, d) if inverse else cv2.fisheye.distortPoints(xy, eye, d)
        elif inverse:
            out = cv2.undistortPoints(xy, eye, d)
        else:
            out, _ = cv2.projectPoints(np.c_[xy.reshape(-1, 2), np.ones(len(xy))], np.zeros(3), np.zeros(3), eye, d)
        return out.reshape(-1, 2)

    @cached_property
    def _max_radius(self) -> float:
        """Ideal normalised radius up to which the radial distortion keeps growing with the radius."""
        d = self._coefficients()
        if self.distortion_model == "equidistant":
            theta = np.linspace(0.0, math.pi / 2, 20_001)[1:]
            t2 = theta * theta
            grown = theta * (1 + t2 * (d[0] + t2 * (d[1] + t2 * (d[2] + t2 * d[3]))))
            radius = np.tan(theta)
        else:
            radius = np.linspace(0.0, 50.0, 50_001)[1:]
            r2 = radius * radius
            k1, k2, _, _, k3, *rest = d
            k4, k5, k6 = rest if rest else (0.0, 0.0, 0.0)
            grown = radius * (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        folds = np.flatnonzero(np.diff(grown) <= 0)
        return float(radius[folds[0]]) if folds.size else math.inf

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Base-frame directions (shape of u + (3,), not normalised) of the rays through pixels (u, v)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        pix = np.stack([u.reshape(-1), v.reshape(-1), np.ones(u.size)], axis=1)
        xyz = pix @ np.linalg.inv(self._pixel_matrix()).T  # ideal (or rectified) coordinates, z = 1
        if self.distorted:
            xyz[:, :2] = self._distort(xyz[:, :2], inverse=True)
        return (xyz @ self._to_camera().T).reshape(*u.shape, 3)

    def horizon_row(self, u: float | None = None) -> float:
        """Image row of the horizon at column u (default: the principal point's), distortion ignored:
        rows above it never see the ground. NaN when the horizon is vertical in the image."""
        m = self._pixel_matrix()
        u = m[0, 2] if u is None else u
        c = (self._to_camera() @ np.linalg.inv(m))[2]  # base z of the ray through (u, v, 1)
        if abs(c[1]) < 1e-12:
            return float("nan")
        return float(-(c[0] * u + c[2]) / c[1])
