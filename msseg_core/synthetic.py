"""Synthetic driving scenes with exact per-pixel CamVid labels: a camera that needs no data set.

Why: the demo, the ROS tests and the road-grid checks need frames whose ground truth is known to the
pixel and whose geometry is known to the centimetre. Scenes are ray cast with numpy (every pixel's
ray hits the nearest of a set of analytic shapes: ground plane, boxes, cylinders, ellipsoids, discs),
so the label of every pixel is the class of exactly what its centre sees; no void pixels at all.

Geometry (REP-103 axes, the same conventions as `msseg_core.geometry`):

* world frame: x forward along a straight, flat road, y left, z up; the ground is the plane z = 0 and
  the road is the strip |y| <= road_width / 2 (lane markings are part of Road, as in CamVid); a
  sidewalk (Pavement) of `sidewalk_width` follows on each side, then buildings; all other ground
  beyond the road (gaps between buildings, the far distance) is Pavement too.
* camera: at (x_cam, camera_y, CAMERA_HEIGHT = 1.5 m), looking along +x, pitched DOWN by
  CAMERA_PITCH_DEG = 3 degrees, no roll or yaw; pinhole, square pixels, no distortion,
  K = `intrinsics(width, height, hfov_deg)` (default HFOV 60 degrees, principal point at the centre).
  `camera_y` is the centre of the rightmost lane (right-hand traffic) plus a small per-seed offset.
* in `msseg_core.geometry` terms: ``CameraPose(height=1.5, pitch=radians(3))`` with the base frame on
  the ground right below the camera (``SceneInfo.camera_pose()``); the road then spans
  ``SceneInfo.road_right <= y <= SceneInfo.road_left`` in that base frame for every x (parking strips,
  when a scene has them, are road too), wherever no car, cyclist or pole stands on it.

Per seed, the scene draws: road width and lane count, sidewalk width, buildings (facades with
windows, varying heights and set-backs), trees, street lights, signs and traffic lights, fences,
parked and moving cars, pedestrians, sometimes a cyclist; sun direction and strength with cast
shadows from buildings and cars, clear or overcast sky with clouds, haze, exposure and white
balance, then sensor blur and noise. `SceneSequence` drives forward through the same world.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

# CamVid (SegNet 11-class) ids, see msseg_core.classes.CAMVID.
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
NUM_CLASSES = 11

CAMERA_HEIGHT = 1.5
"""Camera height above the ground plane, metres."""
CAMERA_PITCH_DEG = 3.0
"""Camera pitch, degrees, positive = looking down (as `geometry.CameraPose.pitch`)."""
DEFAULT_HFOV_DEG = 60.0
"""Horizontal field of view of the default camera, degrees."""

VIEW_DISTANCE = 150.0  # objects are generated up to this far ahead of the camera
SKYLINE_DISTANCE = 450.0  # a distant row of buildings closes the view
BLOCK = 50.0  # the world is generated lazily in blocks of this length along x
_NEAR = 0.05


# -- camera ---------------------------------------------------------------------------------------
def intrinsics(width: int, height: int, hfov_deg: float = DEFAULT_HFOV_DEG) -> np.ndarray:
    """3x3 pinhole K: square pixels, principal point at the image centre (pixel centres at integers,
    the CameraInfo / OpenCV convention), focal length from the horizontal field of view."""
    if width < 1 or height < 1 or not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"need width, height >= 1 and 0 < hfov < 180, got {width}x{height}, {hfov_deg}")
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


# Optical axes (x right, y down, z forward) expressed in the camera body frame (x fwd, y left, z up).
_R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraModel:
    """The synthetic camera: intrinsics plus its mounting above the flat ground."""

    width: int = 480
    height: int = 360
    hfov_deg: float = DEFAULT_HFOV_DEG
    mount_height: float = CAMERA_HEIGHT
    pitch_deg: float = CAMERA_PITCH_DEG

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the intrinsic matrix
        return intrinsics(self.width, self.height, self.hfov_deg)

    def rotation(self) -> np.ndarray:
        """R_world_optical: optical axes expressed in the world (= base) frame."""
        p = math.radians(self.pitch_deg)
        ry = np.array([[math.cos(p), 0.0, math.sin(p)], [0.0, 1.0, 0.0], [-math.sin(p), 0.0, math.cos(p)]])
        return ry @ _R_BODY_OPTICAL

    def rays(self) -> np.ndarray:
        """H x W x 3 world-frame directions of the rays through the pixel centres (optical z = 1)."""
        k = self.K
        u = (np.arange(self.width) - k[0, 2]) / k[0, 0]
        v = (np.arange(self.height) - k[1, 2]) / k[1, 1]
        uu, vv = np.meshgrid(u, v)
        d_opt = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
        return d_opt @ self.rotation().T

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N x 3 points in the base frame (on the ground below the camera) -> (u, v, depth)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3) - np.array([0.0, 0.0, self.mount_height])
        p_opt = pts @ self.rotation()  # R^T p in row-vector form
        z = p_opt[:, 2]
        safe = np.where(z > 1e-9, z, 1.0)
        k = self.K
        return k[0, 0] * p_opt[:, 0] / safe + k[0, 2], k[1, 1] * p_opt[:, 1] / safe + k[1, 2], z

    def horizon_row(self) -> float:
        """Image row of the horizon (rows below it see the ground)."""
        k = self.K
        return float(k[1, 2] - k[1, 1] * math.tan(math.radians(self.pitch_deg)))

    def ground_distance(self, row: float) -> float:
        """Forward distance (base x) of the ground seen at image row `row` (inf at/above the horizon)."""
        k = self.K
        below = math.radians(self.pitch_deg) + math.atan((row - k[1, 2]) / k[1, 1])
        return self.mount_height / math.tan(below) if below > 0 else math.inf


# -- procedural textures --------------------------------------------------------------------------
def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice -> reproducible pseudo-random floats in [0, 1]."""
    h = (ix.astype(np.uint32) * np.uint32(0x27D4EB2D)) ^ (iy.astype(np.uint32) * np.uint32(0x165667B1))
    h ^= np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(1.0 / 4294967295.0)


_TEX = 256


@lru_cache(maxsize=16)
def _texture(salt: int, base: float) -> np.ndarray:
    """A tileable 256 x 256 fractal noise in [-1, 1] (`base` = cells per tile of the first octave)."""
    yy, xx = np.mgrid[0:_TEX, 0:_TEX].astype(np.float32) / _TEX
    out = np.zeros((_TEX, _TEX), np.float32)
    amp, total, freq = 1.0, 0.0, base
    for octave in range(4):
        n = int(freq)
        x, y = xx * n, yy * n
        xi, yi = np.floor(x), np.floor(y)
        fx, fy = x - xi, y - yi
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        xi, yi = xi.astype(np.int64), yi.astype(np.int64)
        s = salt + 7919 * octave
        a, b = _hash01(xi % n, yi % n, s), _hash01((xi + 1) % n, yi % n, s)
        c, d = _hash01(xi % n, (yi + 1) % n, s), _hash01((xi + 1) % n, (yi + 1) % n, s)
        out += amp * ((a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy)
        total += amp
        amp *= 0.55
        freq *= 2
    out /= total
    return ((out - out.mean()) / (out.std() + 1e-6) / 3.0).clip(-1, 1).astype(np.float32)


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Nearest lookup of a tileable texture at world coordinates (metres) times `scale` texels/m."""
    iu = (u * scale).astype(np.int32) & (_TEX - 1)  # & = modulo for a power of two, negatives too
    iv = (v * scale).astype(np.int32) & (_TEX - 1)
    return tex[iv, iu]


def _noise(u: np.ndarray, v: np.ndarray, salt: int, scale: float) -> np.ndarray:
    """Two non-commensurate texture lookups so the tiling never shows; about [-1, 1]."""
    return 0.6 * _sample(_texture(salt % 5, 8.0), u, v, scale) + 0.4 * _sample(
        _texture((salt + 2) % 5, 16.0), u + 17.3, v + 5.1, scale * 0.37)


def _rgb(*c: float) -> np.ndarray:
    return np.array(c, dtype=np.float32) / 255.0


# -- shapes ---------------------------------------------------------------------------------------
Paint = Callable[[np.ndarray, np.ndarray, dict], np.ndarray]
"""(hit points N x 3, normals N x 3, extra per-hit arrays) -> albedo N x 3 in [0, 1]."""


class _Shape:
    """An analytic surface with a class label, an axis-aligned bounding box and a paint function."""

    label: int
    lo: np.ndarray
    hi: np.ndarray
    paint: Paint

    def intersect(self, o: np.ndarray, d: np.ndarray, inv: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """(t, hit, extra) for rays o + t d (d: h x w x 3); extra arrays are h x w [x k]."""
        raise NotImplementedError

    def normals(self, p: np.ndarray, d: np.ndarray, extra: dict) -> np.ndarray:
        raise NotImplementedError


def _cut(extra: dict, m: np.ndarray) -> dict:
    return {k: v[m] for k, v in extra.items()}


class _Box(_Shape):
    def __init__(self, lo, hi, label: int, paint: Paint):
        self.lo, self.hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        self.label, self.paint = label, paint

    def intersect(self, o, d, inv):
        t1 = (self.lo - o) * inv
        t2 = (self.hi - o) * inv
        tn = np.minimum(t1, t2)
        tf = np.maximum(t1, t2)
        tx, ty, tz = tn[..., 0], tn[..., 1], tn[..., 2]
        tmin = np.maximum(np.maximum(tx, ty), tz)
        tmax = np.minimum(np.minimum(tf[..., 0], tf[..., 1]), tf[..., 2])
        hit = (tmax >= tmin) & (tmin > _NEAR)
        return tmin, hit, {"tn": tn}

    def normals(self, p, d, extra):
        n = np.zeros_like(p)
        ax = extra["tn"].argmax(1)  # the slab entered last is the face hit
        idx = np.arange(len(p))
        n[idx, ax] = -np.sign(d[idx, ax])
        return n


class _Cylinder(_Shape):
    """Vertical cylinder (no caps): poles and trunks."""

    def __init__(self, cx, cy, r, z0, z1, label: int, paint: Paint):
        self.c = np.array([cx, cy], np.float32)
        self.r, self.z0, self.z1 = r, z0, z1
        self.lo = np.array([cx - r, cy - r, z0], np.float32)
        self.hi = np.array([cx + r, cy + r, z1], np.float32)
        self.label, self.paint = label, paint

    def intersect(self, o, d, inv):
        ox, oy = o[0] - self.c[0], o[1] - self.c[1]
        dx, dy = d[..., 0], d[..., 1]
        a = dx * dx + dy * dy
        b = 2 * (ox * dx + oy * dy)
        c = ox * ox + oy * oy - self.r * self.r
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a + 1e-12)
        z = o[2] + t * d[..., 2]
        return t, (disc > 0) & (t > _NEAR) & (z >= self.z0) & (z <= self.z1), {}

    def normals(self, p, d, extra):
        n = np.zeros_like(p)
        n[:, :2] = (p[:, :2] - self.c) / self.r
        return n


class _Ellipsoid(_Shape):
    """Tree crowns, heads."""

    def __init__(self, c, radii, label: int, paint: Paint):
        self.c, self.r = np.asarray(c, np.float32), np.asarray(radii, np.float32)
        self.lo, self.hi = self.c - self.r, self.c + self.r
        self.label, self.paint = label, paint

    def intersect(self, o, d, inv):
        oc = (o - self.c) / self.r
        dd = d / self.r
        a = (dd * dd).sum(-1)
        b = 2 * (dd * oc).sum(-1)
        c = float((oc * oc).sum()) - 1.0
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        return t, (disc > 0) & (t > _NEAR), {}

    def normals(self, p, d, extra):
        n = (p - self.c) / (self.r * self.r)
        return n / np.linalg.norm(n, axis=1, keepdims=True)


class _Planar(_Shape):
    """A bounded piece of the plane coordinate[axis] = value, with an arbitrary shape mask given in
    the plane's two other coordinates (fences, signs, bicycle wheels)."""

    def __init__(self, axis: int, value: float, lo, hi, label: int, paint: Paint,
                 mask: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.axis, self.value = axis, value
        self.lo, self.hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        self.lo[axis] = self.hi[axis] = value
        self.others = [i for i in range(3) if i != axis]
        self.label, self.paint, self.mask = label, paint, mask

    def intersect(self, o, d, inv):
        t = (self.value - o[self.axis]) * inv[..., self.axis]
        a, b = self.others
        pa = o[a] + t * d[..., a]
        pb = o[b] + t * d[..., b]
        hit = (t > _NEAR) & (pa >= self.lo[a]) & (pa <= self.hi[a]) & (pb >= self.lo[b]) & (pb <= self.hi[b])
        if self.mask is not None:
            hit &= self.mask(pa, pb)
        return t, hit, {}

    def normals(self, p, d, extra):
        n = np.zeros_like(p)
        n[:, self.axis] = -np.sign(d[:, self.axis])
        return n


# -- scene description ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneInfo:
    """What a seed fixed about the world and the camera; lengths in metres."""

    seed: int
    lanes: int
    lane_width: float
    sidewalk_width: float
    camera_y: float  # lateral position of the camera in the world frame (y left)
    parking_width: float = 0.0  # a strip of parked cars on each side, part of the road
    camera_height: float = CAMERA_HEIGHT
    pitch_deg: float = CAMERA_PITCH_DEG
    sun_elevation_deg: float = 40.0
    sun_azimuth_deg: float = 0.0
    overcast: bool = False

    @property
    def road_width(self) -> float:
        return self.lanes * self.lane_width + 2 * self.parking_width

    @property
    def lanes_width(self) -> float:
        """Width of the driving lanes (the road minus the parking strips)."""
        return self.lanes * self.lane_width

    def camera_pose(self):  # -> msseg_core.geometry.CameraPose (imported lazily)
        """The camera mounting in `msseg_core.geometry` terms, base frame on the ground below the camera."""
        from msseg_core.geometry import CameraPose

        return CameraPose(height=self.camera_height, pitch=math.radians(self.pitch_deg))

    @property
    def road_left(self) -> float:
        """Left road edge in the base frame (y, metres; the base frame is on the ground below the camera)."""
        return self.road_width / 2.0 - self.camera_y

    @property
    def road_right(self) -> float:
        """Right road edge in the base frame (negative: right of the camera)."""
        return -self.road_width / 2.0 - self.camera_y


@dataclass
class _Look:
    """Per-scene appearance: lighting, sky, palette choices."""

    sun: np.ndarray
    sun_strength: float
    ambient: float
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    cloudiness: float
    haze: float  # metres for 63% fade
    exposure: float
    white: np.ndarray
    asphalt: np.ndarray
    pavement: np.ndarray
    facades: list = field(default_factory=list)


_FACADES = [_rgb(165, 90, 70), _rgb(190, 180, 160), _rgb(140, 140, 145), _rgb(210, 200, 185),
            _rgb(120, 70, 55), _rgb(175, 160, 130), _rgb(100, 100, 110), _rgb(200, 170, 140),
            _rgb(230, 225, 215), _rgb(150, 120, 100)]
_CAR_COLOURS = [_rgb(200, 200, 205), _rgb(30, 30, 35), _rgb(150, 20, 25), _rgb(20, 50, 120), _rgb(235, 235, 235),
                _rgb(90, 95, 100), _rgb(120, 130, 140), _rgb(40, 80, 50), _rgb(210, 170, 40), _rgb(60, 30, 20)]
_CLOTHES = [_rgb(30, 30, 40), _rgb(150, 30, 30), _rgb(40, 60, 120), _rgb(200, 200, 190), _rgb(90, 80, 60),
            _rgb(60, 110, 70), _rgb(170, 120, 40), _rgb(20, 20, 20)]
_SKIN = [_rgb(230, 190, 160), _rgb(190, 140, 110), _rgb(120, 80, 60), _rgb(90, 60, 45)]


def _scene_info(seed: int) -> tuple[SceneInfo, _Look]:
    rng = np.random.default_rng([seed, 1])
    lanes = int(rng.choice([2, 2, 3, 4]))
    lane_width = float(rng.uniform(3.0, 3.6))
    sidewalk = float(rng.uniform(2.0, 4.0))
    camera_y = -(lanes / 2.0 - 0.5) * lane_width + float(rng.uniform(-0.4, 0.4))
    parking = float(rng.uniform(2.0, 2.4)) if rng.random() < 0.6 else 0.0
    overcast = bool(rng.random() < 0.3)
    elev = float(rng.uniform(12, 65))
    azim = float(rng.uniform(-180, 180))
    info = SceneInfo(seed, lanes, lane_width, sidewalk, camera_y, parking, sun_elevation_deg=elev,
                     sun_azimuth_deg=azim, overcast=overcast)
    e, a = math.radians(elev), math.radians(azim)
    sun = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], np.float32)
    warm = float(rng.uniform(-1, 1))
    white = np.array([1.0 + 0.06 * warm, 1.0, 1.0 - 0.08 * warm], np.float32) * rng.uniform(0.95, 1.05, 3)
    if overcast:
        zen, hor = _rgb(150, 155, 165), _rgb(205, 208, 212)
        look = _Look(sun, float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.8, 0.95)), zen, hor,
                     float(rng.uniform(0.6, 1.0)), float(rng.uniform(250, 500)), float(rng.uniform(0.85, 1.1)),
                     white.astype(np.float32), _rgb(95, 95, 98), _rgb(150, 148, 145))
    else:
        zen = _rgb(40, 95, 185) * rng.uniform(0.85, 1.15)
        hor = _rgb(175, 200, 225) * rng.uniform(0.92, 1.05)
        look = _Look(sun, float(rng.uniform(0.5, 0.75)), float(rng.uniform(0.45, 0.6)), zen.astype(np.float32),
                     hor.astype(np.float32), float(rng.uniform(0.0, 0.55)), float(rng.uniform(500, 1100)),
                     float(rng.uniform(0.8, 1.05)), white.astype(np.float32), _rgb(80, 80, 84) * rng.uniform(0.85, 1.2),
                     _rgb(160, 155, 150) * rng.uniform(0.85, 1.1))
    look.facades = [_FACADES[i] for i in rng.permutation(len(_FACADES))[:6]]
    return info, look


# -- paints ---------------------------------------------------------------------------------------
def _facade_paint(colour: np.ndarray, lo: np.ndarray, hi: np.ndarray, salt: int, style: int) -> Paint:
    """Facade with floors, windows (glass reflecting the sky, some with blinds) and a shop front."""
    rng = np.random.default_rng(salt)
    cell_w = float(rng.uniform(2.4, 3.6))
    floor_h = float(rng.uniform(2.9, 3.5))
    win_w, win_h = float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.4, 0.6))
    frame = colour * 0.6 if style % 2 else np.minimum(colour * 1.35, 1.0)

    def paint(p, n, extra):
        along_x = np.abs(n[:, 1]) > 0.5
        s = np.where(along_x, p[:, 0], p[:, 1])
        z = p[:, 2]
        base = colour * (1.0 + 0.1 * _noise(s, z, salt, 9.0))[:, None]
        if style == 2:  # brick courses
            row = np.floor(z / 0.075)
            mortar = ((z / 0.075 - row) < 0.15) | (((s + 0.11 * (row % 2)) / 0.22) % 1.0 < 0.08)
            base = np.where(mortar[:, None], base * 0.8 + 0.15, base)
        cs = (s / cell_w) % 1.0
        cz = (z / floor_h) % 1.0
        floor = np.floor(z / floor_h)
        cell = np.floor(s / cell_w)
        ground = floor < 1
        in_win = (np.abs(cs - 0.5) < win_w / 2) & (np.abs(cz - 0.5) < win_h / 2) & ~ground & (z < hi[2] - 0.6)
        shop = ground & (cz > 0.12) & (cz < 0.8) & (np.abs(cs - 0.5) < 0.44)
        rim = ((np.abs(cs - 0.5) < win_w / 2 + 0.04) & (np.abs(cz - 0.5) < win_h / 2 + 0.04) & ~ground
               & (z < hi[2] - 0.6) & ~in_win)
        cornice = (cz < 0.04) & ~ground
        r = _hash01(cell.astype(np.int64), floor.astype(np.int64), salt)
        sky = np.clip((z - 2.0) / 25.0, 0, 1)[:, None]
        glass = (_rgb(40, 50, 62) * (1 - sky) + _rgb(120, 140, 165) * sky) * (0.7 + 0.6 * r)[:, None]
        blinds = (r > 0.8)[:, None]
        glass = np.where(blinds, _rgb(200, 190, 160) * 0.8, glass)
        out = base
        out = np.where(rim[:, None], frame, out)
        out = np.where(cornice[:, None], base * 0.75, out)
        out = np.where(in_win[:, None], glass, out)
        out = np.where(shop[:, None], _rgb(35, 40, 45) + 0.25 * glass, out)
        dirt = np.clip(1.0 - z / 6.0, 0, 1)[:, None] * 0.12  # grime near the street
        return (out * (1 - dirt)).astype(np.float32)

    return paint


def _flat_paint(colour: np.ndarray, salt: int, amount: float = 0.12, scale: float = 6.0) -> Paint:
    def paint(p, n, extra):
        u = p[:, 0] + p[:, 1]
        return (colour * (1.0 + amount * _noise(u, p[:, 2], salt, scale))[:, None]).astype(np.float32)

    return paint


def _foliage_paint(colour: np.ndarray, salt: int) -> Paint:
    def paint(p, n, extra):
        g = _noise(p[:, 0] * 1.3 + p[:, 2], p[:, 1] + p[:, 2] * 0.7, salt, 22.0)
        shade = 0.55 + 0.55 * np.clip(g + 0.3, -0.5, 1.0)
        return (colour * shade[:, None]).astype(np.float32)

    return paint


def _car_paint(colour: np.ndarray, lo: np.ndarray, hi: np.ndarray, rear_facing: bool, part: str, salt: int) -> Paint:
    """Body (lights, plate, bumper), cabin (glass with pillars) or wheel."""
    size = hi - lo

    def paint(p, n, extra):
        rel = (p - lo) / size
        out = np.broadcast_to(colour, p.shape).copy()
        if part == "wheel":
            return np.broadcast_to(_rgb(22, 22, 24), p.shape).copy()
        end = np.abs(n[:, 0]) > 0.5
        side = np.abs(n[:, 1]) > 0.5
        top = n[:, 2] > 0.5
        if part == "cabin":
            pillar = (rel[:, 1] < 0.06) | (rel[:, 1] > 0.94)
            pillar_s = (rel[:, 0] < 0.06) | (rel[:, 0] > 0.94) | (np.abs(rel[:, 0] - 0.5) < 0.03)
            glass = (end & ~pillar) | (side & ~pillar_s)
            g = _rgb(30, 38, 48) + _rgb(60, 70, 85) * rel[:, 2:3]
            out = np.where(glass[:, None], g, out)
            out = np.where(top[:, None], colour * 1.1, out)
            return np.clip(out, 0, 1).astype(np.float32)
        # body
        bumper = rel[:, 2] < 0.22
        out = np.where(bumper[:, None], colour * 0.55 + 0.03, out)
        lights = end & (rel[:, 2] > 0.55) & (rel[:, 2] < 0.8) & ((rel[:, 1] < 0.18) | (rel[:, 1] > 0.82))
        lamp = _rgb(200, 25, 20) if rear_facing else _rgb(235, 235, 220)
        out = np.where(lights[:, None], lamp, out)
        plate = end & (rel[:, 2] > 0.25) & (rel[:, 2] < 0.45) & (np.abs(rel[:, 1] - 0.5) < 0.13)
        out = np.where(plate[:, None], _rgb(230, 220, 120) if rear_facing else _rgb(240, 240, 240), out)
        grille = end & ~rear_facing & (rel[:, 2] > 0.35) & (rel[:, 2] < 0.6) & (np.abs(rel[:, 1] - 0.5) < 0.25)
        out = np.where(grille[:, None], _rgb(25, 25, 28), out)
        sheen = np.clip(rel[:, 2] - 0.5, 0, 1)[:, None] * 0.25
        return np.clip(out + sheen * side[:, None], 0, 1).astype(np.float32)

    return paint


def _sign_paint(kind: int) -> Paint:
    """Round red-rimmed, blue, warning triangle, or traffic light housing."""

    def paint(p, n, extra):
        out = np.broadcast_to(_rgb(230, 230, 230), p.shape).copy()
        if "r" in extra:
            r = extra["r"]
            if kind == 0:
                out[r > 0.72] = _rgb(200, 20, 25)
            elif kind == 1:
                out[:] = _rgb(20, 70, 170)
                out[r < 0.35] = _rgb(235, 235, 235)
            else:
                out[r > 0.65] = _rgb(210, 30, 30)
        return out

    return paint


def _traffic_light_paint(lo: np.ndarray, hi: np.ndarray, state: int) -> Paint:
    colours = [_rgb(255, 40, 30), _rgb(255, 190, 30), _rgb(40, 255, 120)]

    def paint(p, n, extra):
        rel = (p - lo) / (hi - lo)
        out = np.broadcast_to(_rgb(25, 27, 25), p.shape).copy()
        facing = np.abs(n[:, 0]) > 0.5
        for i in range(3):
            zc = 0.8 - 0.3 * i
            lamp = facing & ((rel[:, 1] - 0.5) ** 2 * 4 + ((rel[:, 2] - zc) / 0.33) ** 2 * 4 < 0.25)
            out[lamp] = colours[i] if i == state else colours[i] * 0.25
        return out

    return paint


# -- the world ------------------------------------------------------------------------------------
def _person(x: float, y: float, salt: int, label: int, scale: float = 1.0, riding: bool = False) -> list[_Shape]:
    """A pedestrian (or the rider of a bicycle) as a few boxes and a head."""
    rng = np.random.default_rng(salt)
    top, bottom = _CLOTHES[rng.integers(len(_CLOTHES))], _CLOTHES[rng.integers(len(_CLOTHES))]
    skin = _SKIN[rng.integers(len(_SKIN))]
    hair = _rgb(30, 20, 15) * rng.uniform(0.6, 2.5)
    s = scale
    shapes: list[_Shape] = []
    z_hip = (0.85 if not riding else 1.0) * s
    if not riding:
        stride = float(rng.uniform(-0.18, 0.18))
        for dy, dx in ((-0.1, stride), (0.1, -stride)):
            shapes.append(_Box([x + dx - 0.08, y + dy - 0.07, 0.0], [x + dx + 0.08, y + dy + 0.07, z_hip], label,
                               _flat_paint(bottom, salt, 0.1)))
    else:
        for dy in (-0.1, 0.1):
            shapes.append(_Box([x - 0.25, y + dy - 0.06, 0.45], [x - 0.05, y + dy + 0.06, z_hip], label,
                               _flat_paint(bottom, salt, 0.1)))
    lean = 0.15 if riding else 0.0
    shapes.append(_Box([x - 0.13 + lean, y - 0.21 * s, z_hip], [x + 0.13 + lean, y + 0.21 * s, z_hip + 0.6 * s], label,
                       _flat_paint(top, salt + 1, 0.1)))
    for dy in (-0.27, 0.27):
        shapes.append(_Box([x - 0.06 + lean, y + dy * s - 0.05, z_hip + 0.05], [x + 0.06 + lean, y + dy * s + 0.05,
                                                                               z_hip + 0.58 * s], label,
                           _flat_paint(top, salt + 2, 0.1)))
    head_z = z_hip + 0.6 * s + 0.13 * s
    shapes.append(_Ellipsoid([x + lean, y, head_z], [0.1 * s, 0.09 * s, 0.12 * s], label,
                             lambda p, n, e, _c=skin, _h=hair, _z=head_z: np.where(
                                 (p[:, 2] > _z + 0.02)[:, None], _h, _c).astype(np.float32)))
    return shapes


def _bicycle(x: float, y: float, salt: int) -> list[_Shape]:
    """Two spoked wheels (rings in the plane y = const), a frame, and a rider: all Bicyclist."""
    frame_col = _CAR_COLOURS[salt % len(_CAR_COLOURS)]
    shapes: list[_Shape] = []
    r_out, r_in = 0.34, 0.29
    for wx in (x - 0.55, x + 0.55):
        def ring(a, b, _wx=wx):  # a = x, b = z (the plane's other coordinates)
            rr = (a - _wx) ** 2 + (b - r_out) ** 2
            spoke = (np.abs(a - _wx) < 0.015) | (np.abs(b - r_out) < 0.015)
            return (rr <= r_out ** 2) & ((rr >= r_in ** 2) | spoke)

        shapes.append(_Planar(1, y, [wx - r_out, y, 0.0], [wx + r_out, y, 2 * r_out], BICYCLIST,
                              _flat_paint(_rgb(20, 20, 20), salt, 0.05), ring))
    shapes.append(_Box([x - 0.5, y - 0.03, 0.5], [x + 0.5, y + 0.03, 0.56], BICYCLIST, _flat_paint(frame_col, salt)))
    shapes.append(_Box([x - 0.1, y - 0.03, 0.3], [x - 0.04, y + 0.03, 0.95], BICYCLIST, _flat_paint(frame_col, salt)))
    shapes.append(_Box([x + 0.45, y - 0.25, 0.95], [x + 0.5, y + 0.25, 1.0], BICYCLIST,
                       _flat_paint(_rgb(30, 30, 30), salt)))
    shapes += _person(x - 0.1, y, salt + 5, BICYCLIST, 0.95, riding=True)
    return shapes


def _car(x: float, y: float, heading: int, salt: int) -> list[_Shape]:
    """A car centred at (x, y) on the road: body, cabin, four wheels (road visible underneath)."""
    rng = np.random.default_rng(salt)
    length, width = float(rng.uniform(3.9, 4.8)), float(rng.uniform(1.7, 1.9))
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
    body_top = float(rng.uniform(0.95, 1.1))
    van = rng.random() < 0.15
    cabin_top = body_top + (float(rng.uniform(0.45, 0.55)) if not van else 0.9)
    lo, hi = np.array([x - length / 2, y - width / 2, 0.28]), np.array([x + length / 2, y + width / 2, body_top])
    rear = heading > 0  # same direction as the camera: we see its rear
    shapes: list[_Shape] = [_Box(lo, hi, CAR, _car_paint(colour, lo, hi, rear, "body", salt))]
    front_gap, back_gap = (1.25, 0.75) if not van else (0.7, 0.1)
    if heading < 0:
        front_gap, back_gap = back_gap, front_gap
    clo = np.array([lo[0] + back_gap, lo[1] + 0.08, body_top])
    chi = np.array([hi[0] - front_gap, hi[1] - 0.08, cabin_top])
    shapes.append(_Box(clo, chi, CAR, _car_paint(colour, clo, chi, rear, "cabin", salt)))
    for wx in (x - length / 2 + 0.75, x + length / 2 - 0.75):
        for wy in (y - width / 2 + 0.12, y + width / 2 - 0.12):
            wlo = np.array([wx - 0.33, wy - 0.13, 0.0])
            whi = np.array([wx + 0.33, wy + 0.13, 0.62])
            shapes.append(_Box(wlo, whi, CAR, _car_paint(colour, wlo, whi, rear, "wheel", salt)))
    return shapes


@dataclass
class _Block:
    static: list[_Shape]
    cars: list[tuple[float, float, float, int, int]]  # (x0, y, speed, heading, salt) of moving traffic
    riders: list[tuple[float, float, float, int]]  # (x0, y, speed, salt)
    casters: list[np.ndarray]  # K x 3 points whose convex hull casts a shadow on the ground


class _World:
    """The endless street of one seed, generated block by block on demand (cached)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.info, self.look = _scene_info(seed)
        self._blocks: dict[int, _Block] = {}

    def block(self, b: int) -> _Block:
        if b not in self._blocks:
            if len(self._blocks) > 16:
                self._blocks.pop(min(self._blocks))
            self._blocks[b] = self._make_block(b)
        return self._blocks[b]

    def _make_block(self, b: int) -> _Block:
        info, look = self.info, self.look
        rng = np.random.default_rng([self.seed, 2, b & 0xFFFFFFFF])
        half = info.road_width / 2
        walk = info.sidewalk_width
        x0, x1 = b * BLOCK, (b + 1) * BLOCK
        static: list[_Shape] = []
        casters: list[np.ndarray] = []
        style_salt = int(rng.integers(1 << 30))
        for side in (1, -1):  # left (+y), right (-y)
            x = x0
            while x < x1:
                length = float(rng.uniform(8, 26))
                if rng.random() < 0.18:  # a gap between buildings (a plaza or a side street)
                    x += float(rng.uniform(3, 9))
                    continue
                xe = min(x + length, x1)
                setback = float(rng.choice([0.0, 0.0, rng.uniform(0.5, 4.0)]))
                height = float(rng.uniform(6, 26)) if rng.random() < 0.9 else float(rng.uniform(28, 45))
                depth = float(rng.uniform(10, 20))
                inner = half + walk + setback
                ylo, yhi = (inner, inner + depth) if side > 0 else (-inner - depth, -inner)
                lo, hi = np.array([x, ylo, 0.0]), np.array([xe, yhi, height])
                colour = look.facades[int(rng.integers(len(look.facades)))] * rng.uniform(0.85, 1.1)
                style = int(rng.integers(3))
                static.append(_Box(lo, hi, BUILDING, _facade_paint(colour.astype(np.float32), lo, hi,
                                                                   style_salt + int(x * 10), style)))
                casters.append(_corners(lo, hi))
                if setback > 1.2 and rng.random() < 0.6:  # a fence in front of a set-back building
                    fy = side * (half + walk + 0.1)
                    fh = float(rng.uniform(0.9, 1.6))
                    pitch, slat = float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.3, 0.6))

                    def fence_mask(a, zc, _p=pitch, _s=slat, _h=fh):
                        rails = (np.abs(zc - 0.15) < 0.04) | (np.abs(zc - (_h - 0.08)) < 0.04)
                        return ((a / _p) % 1.0 < _s) | rails

                    fcol = _rgb(60, 60, 55) if rng.random() < 0.5 else _rgb(150, 110, 70)
                    static.append(_Planar(1, fy, [x + 0.3, fy, 0.0], [xe - 0.3, fy, fh], FENCE,
                                          _flat_paint(fcol, style_salt, 0.15), fence_mask))
                x = xe + (0.0 if rng.random() < 0.6 else float(rng.uniform(0.5, 2.0)))
            # street furniture on slots along the kerb
            kerb = side * (half + 0.45)
            for slot in np.arange(x0 + 2.0, x1, 6.0):
                r = rng.random()
                sx = float(slot + rng.uniform(-1, 1))
                if r < 0.22:  # tree
                    ty = side * (half + min(walk * 0.55, 1.4))
                    trunk_h = float(rng.uniform(2.0, 3.2))
                    static.append(_Cylinder(sx, ty, float(rng.uniform(0.12, 0.2)), 0.0, trunk_h + 0.8, TREE,
                                            _flat_paint(_rgb(75, 60, 45), style_salt, 0.2, 12.0)))
                    green = _rgb(55, 95, 40) * rng.uniform(0.75, 1.25, 3)
                    rad = float(rng.uniform(1.4, 2.6))
                    for k in range(int(rng.integers(2, 4))):
                        off = rng.uniform(-0.6, 0.6, 3) * rad
                        c = [sx + off[0], ty + off[1] * 0.6, trunk_h + rad + off[2] * 0.5]
                        static.append(_Ellipsoid(c, np.array([rad, rad, rad * 1.1]) * rng.uniform(0.7, 1.0), TREE,
                                                 _foliage_paint(green.astype(np.float32), style_salt + k)))
                    casters.append(_sphere_points([sx, ty, trunk_h + rad], rad))
                elif r < 0.34:  # street light
                    h = float(rng.uniform(6.5, 9.0))
                    static.append(_Cylinder(sx, kerb, 0.09, 0.0, h, POLE, _flat_paint(_rgb(95, 100, 100), 3, 0.08)))
                    arm = -side * 1.6
                    ylo, yhi = sorted((kerb, kerb + arm))
                    static.append(_Box([sx - 0.05, ylo, h - 0.1], [sx + 0.05, yhi, h], POLE,
                                       _flat_paint(_rgb(95, 100, 100), 3, 0.05)))
                    static.append(_Box([sx - 0.2, kerb + arm - 0.35, h - 0.25], [sx + 0.2, kerb + arm + 0.1, h - 0.05],
                                       POLE, _flat_paint(_rgb(70, 72, 75), 3, 0.05)))
                elif r < 0.5:  # sign on a post
                    h = float(rng.uniform(2.2, 3.0))
                    static.append(_Cylinder(sx, kerb, 0.04, 0.0, h, POLE, _flat_paint(_rgb(140, 140, 140), 4, 0.05)))
                    kind = int(rng.integers(3))
                    size = float(rng.uniform(0.3, 0.45))
                    cy, cz = kerb, h + size

                    def sign_mask(a, b_, _cy=cy, _cz=cz, _s=size, _k=kind):
                        if _k == 2:  # warning triangle, apex up
                            return (b_ - _cz >= -_s * 0.5) & (b_ - _cz <= _s - 1.7 * np.abs(a - _cy))
                        return (a - _cy) ** 2 + (b_ - _cz) ** 2 <= _s * _s

                    plate = _Planar(0, sx, [sx, cy - size, cz - size], [sx, cy + size, cz + size], SIGN,
                                    _sign_paint(kind), sign_mask)
                    static.append(_SignPlate(plate, cy, cz, size))
                elif r < 0.56:  # traffic light
                    h = float(rng.uniform(2.8, 3.4))
                    static.append(_Cylinder(sx, kerb, 0.07, 0.0, h, POLE, _flat_paint(_rgb(40, 42, 40), 5, 0.05)))
                    box_lo, box_hi = np.array([sx - 0.15, kerb - 0.17, h]), np.array([sx + 0.15, kerb + 0.17, h + 0.9])
                    static.append(_Box(box_lo, box_hi, SIGN, _traffic_light_paint(box_lo, box_hi,
                                                                                   int(rng.integers(3)))))
                if rng.random() < 0.3:  # pedestrian somewhere on the sidewalk
                    py = side * (half + float(rng.uniform(0.6, walk - 0.3)))
                    px = float(slot + rng.uniform(2, 4))
                    static += _person(px, py, int(rng.integers(1 << 30)), PEDESTRIAN, float(rng.uniform(0.85, 1.1)))
            # parked cars on the parking strip, next to the kerb
            if info.parking_width > 0:
                for px in np.arange(x0 + rng.uniform(0, 8), x1 - 3, rng.uniform(5.5, 9.0)):
                    if rng.random() < 0.65:
                        py = side * (half - info.parking_width / 2)
                        shapes = _car(float(px), py, -side, int(rng.integers(1 << 30)))
                        static += shapes
                        casters.append(_corners(shapes[0].lo, shapes[1].hi))
        # moving traffic: (x at t=0, y, world speed, heading, salt)
        cars: list[tuple[float, float, float, int, int]] = []
        for lane in range(info.lanes):
            lane_y = -info.lanes_width / 2 + (lane + 0.5) * info.lane_width
            oncoming = info.lanes >= 2 and lane >= info.lanes // 2
            for _ in range(int(rng.poisson(0.9))):
                cars.append((float(rng.uniform(x0, x1)), lane_y + float(rng.uniform(-0.2, 0.2)),
                             -10.0 if oncoming else 8.0, -1 if oncoming else 1, int(rng.integers(1 << 30))))
        riders = []
        if rng.random() < 0.35:
            riders.append((float(rng.uniform(x0, x1)), -info.lanes_width / 2 + 0.7, 5.0, int(rng.integers(1 << 30))))
        return _Block(static, cars, riders, casters)


def _corners(lo, hi) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], np.float32)


def _sphere_points(c, r: float, n: int = 24) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros(n)], 1)
    pts = np.concatenate([ring, ring[:, [0, 2, 1]], ring[:, [2, 0, 1]]])
    return (np.asarray(c) + r * pts).astype(np.float32)


class _SignPlate(_Shape):
    """A sign plate facing the camera; passes the normalised radius to its paint for the rim."""

    def __init__(self, plate: _Planar, cy: float, cz: float, size: float):
        self.plate, self.cy, self.cz, self.size = plate, cy, cz, size
        self.label, self.lo, self.hi = plate.label, plate.lo, plate.hi
        self.paint = plate.paint

    def intersect(self, o, d, inv):
        t, hit, _ = self.plate.intersect(o, d, inv)
        py = o[1] + t * d[..., 1]
        pz = o[2] + t * d[..., 2]
        r = np.sqrt((py - self.cy) ** 2 + (pz - self.cz) ** 2) / self.size
        return t, hit, {"r": r}

    def normals(self, p, d, extra):
        return self.plate.normals(p, d, extra)


# -- renderer -------------------------------------------------------------------------------------
class _Renderer:
    def __init__(self, camera: CameraModel):
        self.camera = camera
        d = camera.rays().astype(np.float32)
        d[np.abs(d) < 1e-7] = 1e-7  # no exact zeros: 1 / d must be finite
        self.d = d
        self.inv = (1.0 / d).astype(np.float32)
        self.dist_scale = np.linalg.norm(d, axis=-1)  # t * this = distance in metres
        self.k = camera.K
        self.r_world_optical = camera.rotation()
        h, w = camera.height, camera.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rr = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        self.vignette = (1 - 0.18 * rr)[..., None].astype(np.float32)
        self.noise = np.random.default_rng(0).normal(0, 2.5, h * w * 3 + 4096).astype(np.float32)  # sensor noise

    def _region(self, lo: np.ndarray, hi: np.ndarray, origin: np.ndarray) -> tuple[slice, slice] | None:
        """Pixel rectangle covering the projection of a bounding box (None: not in view).

        The box is first clipped to x >= camera x + 0.4 m: nothing closer than that is in the field of
        view (nothing stands within a few centimetres of the camera sideways), so objects beside the
        camera do not cost a full-frame intersection."""
        lo = np.array([max(float(lo[0]), float(origin[0]) + 0.4), lo[1], lo[2]])
        if lo[0] >= hi[0]:
            return None
        corners = _corners(lo, hi)
        p = (corners - origin) @ self.r_world_optical
        h, w = self.camera.height, self.camera.width
        if (p[:, 2] <= _NEAR).all():
            return None
        if (p[:, 2] <= 0.5).any():
            return slice(0, h), slice(0, w)
        u = self.k[0, 0] * p[:, 0] / p[:, 2] + self.k[0, 2]
        v = self.k[1, 1] * p[:, 1] / p[:, 2] + self.k[1, 2]
        u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, w)
        v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, h)
        if u0 >= u1 or v0 >= v1:
            return None
        return slice(v0, v1), slice(u0, u1)

    @staticmethod
    def _ground_albedo(info: SceneInfo, look: _Look, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Asphalt with wheel tracks, patches and worn markings; kerb stones and tiled sidewalk."""
        half = info.road_width / 2
        lanes_half = info.lanes_width / 2
        on_road = np.abs(py) <= half
        tex = _noise(px, py, 11, 24.0)
        road_col = look.asphalt * (1 + 0.18 * tex)[:, None]
        for lane in range(info.lanes):  # darker wheel tracks
            cy = -lanes_half + (lane + 0.5) * info.lane_width
            track = np.maximum(1.0 - ((np.abs(py - cy) - 0.8) / 0.35) ** 2, 0.0)
            road_col *= (1 - 0.12 * track)[:, None]
        patch = _noise(px * 0.3, py, 23, 3.0) > 0.55
        road_col = np.where(patch[:, None], road_col * 0.8, road_col)
        marking = np.zeros(px.shape, bool)
        for k in range(1, info.lanes):
            my = -lanes_half + k * info.lane_width
            centre = k == info.lanes // 2
            dash = (px % 9.0) < (3.0 if not centre else 4.5)
            marking |= (np.abs(py - my) < (0.07 if not centre else 0.09)) & (dash | (centre and info.lanes > 2))
        edge = lanes_half if info.parking_width > 0 else half - 0.25
        marking |= np.abs(np.abs(py) - edge) < 0.07  # edge lines
        if info.parking_width > 0:  # parking bays
            marking |= (np.abs(py) > lanes_half) & (np.abs(py) < half - 0.3) & ((px % 5.5) < 0.1)
        wear = _noise(px, py, 31, 30.0) > 0.25
        road_col = np.where((marking & ~wear)[:, None], _rgb(215, 215, 205) * (1 + 0.05 * tex)[:, None], road_col)
        tiles = ((px % 0.6) < 0.025) | (((py + 0.3) % 0.6) < 0.025)
        pave = look.pavement * (1 + 0.12 * _noise(px, py, 41, 18.0))[:, None]
        pave = np.where(tiles[:, None], pave * 0.8, pave)
        kerb = np.abs(py) - half < 0.22
        pave = np.where(kerb[:, None], np.minimum(look.pavement * 1.25, 1.0), pave)
        return np.where(on_road[:, None], road_col, pave).astype(np.float32)

    def _shadows(self, casters: list[np.ndarray], look: _Look, origin: np.ndarray, gx: np.ndarray, gy: np.ndarray,
                 sunny: bool) -> tuple[np.ndarray, np.ndarray]:
        """(sun visibility, ambient occlusion) of ground points, from a shadow map on the ground plane:
        each caster's shadow is the convex hull of its points projected along the sun direction."""
        res, y_half = 0.08, 40.0
        x_lo = float(origin[0]) - 5.0
        rows, cols = int(2 * y_half / res), int((VIEW_DISTANCE + 15.0) / res)
        shadow = np.zeros((rows, cols), np.uint8)
        ao_res = 0.2
        ao = np.zeros((int(2 * y_half / ao_res), int((VIEW_DISTANCE + 15.0) / ao_res)), np.uint8)
        s = look.sun

        def to_px(xy: np.ndarray, r: float) -> np.ndarray:  # cv2 fixed point with shift = 2
            return np.round(np.stack([(xy[:, 0] - x_lo) * (4 / r), (xy[:, 1] + y_half) * (4 / r)], 1)).astype(np.int32)

        for pts in casters:
            if pts[:, 0].max() < x_lo - 40 or pts[:, 0].min() > x_lo + cols * res + 40:
                continue
            if sunny and s[2] > 0.05:
                ground = pts[:, :2] - s[None, :2] * (pts[:, 2:3] / s[2])
                cv2.fillConvexPoly(shadow, cv2.convexHull(to_px(ground, res)), 1, cv2.LINE_8, 2)
            cv2.fillConvexPoly(ao, cv2.convexHull(to_px(pts[:, :2], ao_res)), 255, cv2.LINE_8, 2)
        ao = cv2.GaussianBlur(ao, (0, 0), 1.2)

        def lookup(grid: np.ndarray, r: float, outside: float) -> np.ndarray:
            ci = ((gx - x_lo) / r).astype(np.int32)
            ri = ((gy + y_half) / r).astype(np.int32)
            inside = (ci >= 0) & (ci < grid.shape[1]) & (ri >= 0) & (ri < grid.shape[0])
            vals = grid[np.clip(ri, 0, grid.shape[0] - 1), np.clip(ci, 0, grid.shape[1] - 1)]
            return np.where(inside, vals, outside).astype(np.float32)

        return 1.0 - lookup(shadow, res, 0.0), lookup(ao, ao_res, 0.0) / 255.0

    def render(self, world: _World, cam_x: float, t_sec: float, frame_salt: int) -> tuple[np.ndarray, np.ndarray]:
        info, look = world.info, world.look
        h, w = self.camera.height, self.camera.width
        origin = np.array([cam_x, info.camera_y, info.camera_height], np.float32)
        d, inv = self.d, self.inv
        dz = d[..., 2]
        ground = dz < 0
        t_ground = np.where(ground, -origin[2] / np.where(ground, dz, -1.0), np.inf).astype(np.float32)
        zbuf = t_ground.copy()
        label = np.full((h, w), SKY, np.uint8)
        colour = np.zeros((h, w, 3), np.float32)

        # ground: labels now, colours once we know which ground pixels stay visible
        gx = origin[0] + t_ground * d[..., 0]
        gy = origin[1] + t_ground * d[..., 1]
        label[ground] = np.where(np.abs(gy[ground]) <= info.road_width / 2, ROAD, PAVEMENT)

        # distant skyline closes the view
        sky_x = origin[0] + SKYLINE_DISTANCE
        t_sky = (sky_x - origin[0]) * inv[..., 0]
        sy = origin[1] + t_sky * d[..., 1]
        sz = origin[2] + t_sky * d[..., 2]
        col_id = np.floor(sy / 14.0).astype(np.int64)
        sk_h = 12.0 + 38.0 * _hash01(col_id, np.zeros_like(col_id), world.seed + 99) ** 2
        sk = (t_sky > 0) & (sz <= sk_h) & (t_sky < zbuf)
        zbuf[sk] = t_sky[sk]
        label[sk] = BUILDING
        base = look.sky_horizon * 0.75
        colour[sk] = base * (0.85 + 0.15 * _hash01(col_id[sk], np.ones_like(col_id[sk]), world.seed))[:, None]

        # objects: static ones and traffic at this time
        shapes: list[_Shape] = []
        b0, b1 = int(math.floor((cam_x - 10) / BLOCK)), int(math.floor((cam_x + VIEW_DISTANCE) / BLOCK))
        casters: list[np.ndarray] = []
        for b in range(b0 - 2, b1 + 3):  # traffic may have moved in from neighbouring blocks
            blk = world.block(b)
            if b0 <= b <= b1:
                shapes += blk.static
                casters += blk.casters
            for x_start, y, speed, heading, salt in blk.cars:
                x = x_start + speed * t_sec
                rel = x - cam_x
                if heading > 0 and abs(y - info.camera_y) < info.lane_width / 2 and rel < 12.0:
                    continue  # never drive into the camera's own lane right in front of it
                if -6 < rel < VIEW_DISTANCE:
                    car = _car(x, y, heading, salt)
                    shapes += car
                    casters.append(_corners(car[0].lo, car[1].hi))
            for x_start, y, speed, salt in blk.riders:
                x = x_start + speed * t_sec
                if -3 < x - cam_x < VIEW_DISTANCE:
                    shapes += _bicycle(x, y, salt)

        for shape in shapes:
            if shape.hi[0] < cam_x - 8 or shape.lo[0] > cam_x + VIEW_DISTANCE + 20:
                continue
            region = self._region(shape.lo, shape.hi, origin)
            if region is None:
                continue
            dr, ir = d[region], inv[region]
            t, hit, extra = shape.intersect(origin, dr, ir)
            zb = zbuf[region]
            m = hit & (t < zb)
            if not m.any():
                continue
            tm = t[m]
            dm = dr[m]
            p = origin + tm[:, None] * dm
            ex = _cut(extra, m)
            n = shape.normals(p, dm, ex)
            lam = np.maximum((n * look.sun).sum(1), 0.0) * look.sun_strength
            up = 0.75 + 0.25 * n[:, 2]  # sky light comes from above
            col = shape.paint(p, n, ex) * (look.ambient * up + lam)[:, None]
            zb[m] = tm
            label[region][m] = shape.label
            colour[region][m] = col

        # ground colour and lighting with cast shadows
        gvis = ground & (zbuf == t_ground)
        if gvis.any():
            colour[gvis] = self._ground_albedo(info, look, gx[gvis], gy[gvis])
            lit, ao = self._shadows(casters, look, origin, gx[gvis], gy[gvis], not info.overcast)
            light = look.ambient * (1 - 0.45 * ao) + look.sun_strength * look.sun[2] * lit
            colour[gvis] *= light[:, None]

        # sky with clouds and sun glow
        sky = label == SKY
        if sky.any():
            ds = d[sky] / self.dist_scale[sky][:, None]
            elev = np.clip(ds[:, 2], 0, 1)
            g = np.sqrt(elev)[:, None]
            sc = look.sky_horizon * (1 - g) + look.sky_zenith * g
            tc = 2000.0 / np.maximum(ds[:, 2], 0.02)
            cx, cy = origin[0] * 0.1 + ds[:, 0] * tc, ds[:, 1] * tc
            cloud = np.clip((_noise(cx, cy, 55, 0.01) + 0.6 * look.cloudiness - 0.25) * 2.2, 0, 1)
            cloud *= np.clip(elev * 8, 0, 1) * (0.3 + 0.7 * look.cloudiness)
            cc = np.array([0.93, 0.93, 0.95], np.float32) * (0.85 + 0.15 * _noise(cx, cy, 56, 0.03))[:, None]
            sc = sc * (1 - cloud[:, None]) + cc * cloud[:, None]
            glow = np.clip((ds @ look.sun), 0, 1) ** 40 * (1 - look.cloudiness * 0.7)
            colour[sky] = sc + glow[:, None] * 0.6

        # haze towards the horizon colour
        dist = np.where(sky, np.inf, zbuf * self.dist_scale)
        fade = (1.0 - np.exp(-dist / look.haze))[..., None]
        colour = np.where(sky[..., None], colour, colour * (1 - fade) + look.sky_horizon * fade)

        # camera: exposure, white balance, vignette, tone curve, blur, noise
        colour *= look.exposure * look.white
        colour *= self.vignette
        colour = np.clip(colour, 0, 1.2)
        colour = colour / (1 + 0.25 * colour) * 1.25  # soft shoulder
        img = np.clip(colour, 0, 1) ** (1 / 1.15) * 255.0
        sigma = 0.5 + 0.2 * min(w, h) / 360
        img = cv2.GaussianBlur(img, (0, 0), sigma)
        start = (frame_salt * 7919) % 4096
        img += self.noise[start:start + img.size].reshape(img.shape)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


# -- public API -----------------------------------------------------------------------------------
@dataclass
class SyntheticFrame:
    """One rendered frame: image, exact labels and the geometry that produced them."""

    rgb: np.ndarray  # H x W x 3 uint8
    labels: np.ndarray  # H x W uint8 CamVid ids (no void)
    index: int
    time: float  # seconds since the sequence start
    info: SceneInfo
    camera: CameraModel


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
        self.world = _World(self.seed)
        self.camera = CameraModel(int(width), int(height), float(hfov_deg), self.world.info.camera_height,
                                  self.world.info.pitch_deg)
        self._renderer = _Renderer(self.camera)
        self._x0 = float(np.random.default_rng([self.seed, 4]).uniform(0, 1000))

    @property
    def info(self) -> SceneInfo:
        return self.world.info

    @property
    def K(self) -> np.ndarray:  # noqa: N802
        return self.camera.K

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
    return _scene_info(int(seed))[0]


def render_scene(seed: int, width: int = 480, height: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """One driving scene: (H x W x 3 uint8 RGB, H x W uint8 CamVid ids). Same seed, same pixels."""
    f = SceneSequence(seed, width, height).frame(0)
    return f.rgb, f.labels
