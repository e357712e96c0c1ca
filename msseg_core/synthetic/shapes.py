"""Analytic surfaces the synthetic street is built from: each intersects a bundle of rays at once
(numpy) and knows its class label, bounding box, normals and paint."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from msseg_core.synthetic.textures import Paint

NEAR = 0.05
"""Hits closer than this to the ray origin [m] are ignored."""


class Shape:
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


def cut(extra: dict, m: np.ndarray) -> dict:
    return {k: v[m] for k, v in extra.items()}


class Box(Shape):
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
        hit = (tmax >= tmin) & (tmin > NEAR)
        return tmin, hit, {"tn": tn}

    def normals(self, p, d, extra):
        n = np.zeros_like(p)
        ax = extra["tn"].argmax(1)  # the slab entered last is the face hit
        idx = np.arange(len(p))
        n[idx, ax] = -np.sign(d[idx, ax])
        return n


class Cylinder(Shape):
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
        return t, (disc > 0) & (t > NEAR) & (z >= self.z0) & (z <= self.z1), {}

    def normals(self, p, d, extra):
        n = np.zeros_like(p)
        n[:, :2] = (p[:, :2] - self.c) / self.r
        return n


class Ellipsoid(Shape):
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
        return t, (disc > 0) & (t > NEAR), {}

    def normals(self, p, d, extra):
        n = (p - self.c) / (self.r * self.r)
        return n / np.linalg.norm(n, axis=1, keepdims=True)


class Planar(Shape):
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
        hit = (t > NEAR) & (pa >= self.lo[a]) & (pa <= self.hi[a]) & (pb >= self.lo[b]) & (pb <= self.hi[b])
        if self.mask is not None:
            hit &= self.mask(pa, pb)
        return t, hit, {}

    def normals(self, p, d, extra):
        n = np.zeros_like(p)
        n[:, self.axis] = -np.sign(d[:, self.axis])
        return n


def box_corners(lo, hi) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], np.float32)


def sphere_points(c, r: float, n: int = 24) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a), np.zeros(n)], 1)
    pts = np.concatenate([ring, ring[:, [0, 2, 1]], ring[:, [2, 0, 1]]])
    return (np.asarray(c) + r * pts).astype(np.float32)


class SignPlate(Shape):
    """A sign plate facing the camera; passes the normalised radius to its paint for the rim."""

    def __init__(self, plate: Planar, cy: float, cz: float, size: float):
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

