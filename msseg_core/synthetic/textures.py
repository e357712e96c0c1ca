"""Procedural textures and paints of the synthetic street: reproducible noise and the albedo of each
kind of surface (facades, cars, foliage, signs), as functions of the world point a ray hit."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

Paint = Callable[[np.ndarray, np.ndarray, dict], np.ndarray]
"""(hit points N x 3, normals N x 3, extra per-hit arrays) -> albedo N x 3 in [0, 1]."""


def hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Integer lattice -> reproducible pseudo-random floats in [0, 1]."""
    h = (ix.astype(np.uint32) * np.uint32(0x27D4EB2D)) ^ (iy.astype(np.uint32) * np.uint32(0x165667B1))
    h ^= np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(1.0 / 4294967295.0)


TEXTURE_SIZE = 256


@lru_cache(maxsize=16)
def tileable_texture(salt: int, base: float) -> np.ndarray:
    """A tileable 256 x 256 fractal noise in [-1, 1] (`base` = cells per tile of the first octave)."""
    yy, xx = np.mgrid[0:TEXTURE_SIZE, 0:TEXTURE_SIZE].astype(np.float32) / TEXTURE_SIZE
    out = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE), np.float32)
    amp, total, freq = 1.0, 0.0, base
    for octave in range(4):
        n = int(freq)
        x, y = xx * n, yy * n
        xi, yi = np.floor(x), np.floor(y)
        fx, fy = x - xi, y - yi
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        xi, yi = xi.astype(np.int64), yi.astype(np.int64)
        s = salt + 7919 * octave
        a, b = hash01(xi % n, yi % n, s), hash01((xi + 1) % n, yi % n, s)
        c, d = hash01(xi % n, (yi + 1) % n, s), hash01((xi + 1) % n, (yi + 1) % n, s)
        out += amp * ((a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy)
        total += amp
        amp *= 0.55
        freq *= 2
    out /= total
    return ((out - out.mean()) / (out.std() + 1e-6) / 3.0).clip(-1, 1).astype(np.float32)


def sample_texture(tex: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Nearest lookup of a tileable texture at world coordinates (metres) times `scale` texels/m."""
    iu = (u * scale).astype(np.int32) & (TEXTURE_SIZE - 1)  # & = modulo for a power of two, negatives too
    iv = (v * scale).astype(np.int32) & (TEXTURE_SIZE - 1)
    return tex[iv, iu]


def noise(u: np.ndarray, v: np.ndarray, salt: int, scale: float) -> np.ndarray:
    """Two non-commensurate texture lookups so the tiling never shows; about [-1, 1]."""
    return 0.6 * sample_texture(tileable_texture(salt % 5, 8.0), u, v, scale) + 0.4 * sample_texture(
        tileable_texture((salt + 2) % 5, 16.0), u + 17.3, v + 5.1, scale * 0.37)


def rgb(*c: float) -> np.ndarray:
    return np.array(c, dtype=np.float32) / 255.0


def facade_paint(colour: np.ndarray, lo: np.ndarray, hi: np.ndarray, salt: int, style: int) -> Paint:
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
        base = colour * (1.0 + 0.1 * noise(s, z, salt, 9.0))[:, None]
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
        r = hash01(cell.astype(np.int64), floor.astype(np.int64), salt)
        sky = np.clip((z - 2.0) / 25.0, 0, 1)[:, None]
        glass = (rgb(40, 50, 62) * (1 - sky) + rgb(120, 140, 165) * sky) * (0.7 + 0.6 * r)[:, None]
        blinds = (r > 0.8)[:, None]
        glass = np.where(blinds, rgb(200, 190, 160) * 0.8, glass)
        out = base
        out = np.where(rim[:, None], frame, out)
        out = np.where(cornice[:, None], base * 0.75, out)
        out = np.where(in_win[:, None], glass, out)
        out = np.where(shop[:, None], rgb(35, 40, 45) + 0.25 * glass, out)
        dirt = np.clip(1.0 - z / 6.0, 0, 1)[:, None] * 0.12  # grime near the street
        return (out * (1 - dirt)).astype(np.float32)

    return paint


def flat_paint(colour: np.ndarray, salt: int, amount: float = 0.12, scale: float = 6.0) -> Paint:
    def paint(p, n, extra):
        u = p[:, 0] + p[:, 1]
        return (colour * (1.0 + amount * noise(u, p[:, 2], salt, scale))[:, None]).astype(np.float32)

    return paint


def foliage_paint(colour: np.ndarray, salt: int) -> Paint:
    def paint(p, n, extra):
        g = noise(p[:, 0] * 1.3 + p[:, 2], p[:, 1] + p[:, 2] * 0.7, salt, 22.0)
        shade = 0.55 + 0.55 * np.clip(g + 0.3, -0.5, 1.0)
        return (colour * shade[:, None]).astype(np.float32)

    return paint


def car_paint(colour: np.ndarray, lo: np.ndarray, hi: np.ndarray, rear_facing: bool, part: str, salt: int) -> Paint:
    """Body (lights, plate, bumper), cabin (glass with pillars) or wheel."""
    size = hi - lo

    def paint(p, n, extra):
        rel = (p - lo) / size
        out = np.broadcast_to(colour, p.shape).copy()
        if part == "wheel":
            return np.broadcast_to(rgb(22, 22, 24), p.shape).copy()
        end = np.abs(n[:, 0]) > 0.5
        side = np.abs(n[:, 1]) > 0.5
        top = n[:, 2] > 0.5
        if part == "cabin":
            pillar = (rel[:, 1] < 0.06) | (rel[:, 1] > 0.94)
            pillar_s = (rel[:, 0] < 0.06) | (rel[:, 0] > 0.94) | (np.abs(rel[:, 0] - 0.5) < 0.03)
            glass = (end & ~pillar) | (side & ~pillar_s)
            g = rgb(30, 38, 48) + rgb(60, 70, 85) * rel[:, 2:3]
            out = np.where(glass[:, None], g, out)
            out = np.where(top[:, None], colour * 1.1, out)
            return np.clip(out, 0, 1).astype(np.float32)
        # body
        bumper = rel[:, 2] < 0.22
        out = np.where(bumper[:, None], colour * 0.55 + 0.03, out)
        lights = end & (rel[:, 2] > 0.55) & (rel[:, 2] < 0.8) & ((rel[:, 1] < 0.18) | (rel[:, 1] > 0.82))
        lamp = rgb(200, 25, 20) if rear_facing else rgb(235, 235, 220)
        out = np.where(lights[:, None], lamp, out)
        plate = end & (rel[:, 2] > 0.25) & (rel[:, 2] < 0.45) & (np.abs(rel[:, 1] - 0.5) < 0.13)
        out = np.where(plate[:, None], rgb(230, 220, 120) if rear_facing else rgb(240, 240, 240), out)
        grille = end & ~rear_facing & (rel[:, 2] > 0.35) & (rel[:, 2] < 0.6) & (np.abs(rel[:, 1] - 0.5) < 0.25)
        out = np.where(grille[:, None], rgb(25, 25, 28), out)
        sheen = np.clip(rel[:, 2] - 0.5, 0, 1)[:, None] * 0.25
        return np.clip(out + sheen * side[:, None], 0, 1).astype(np.float32)

    return paint


def sign_paint(kind: int) -> Paint:
    """Round red-rimmed, blue, warning triangle, or traffic light housing."""

    def paint(p, n, extra):
        out = np.broadcast_to(rgb(230, 230, 230), p.shape).copy()
        if "r" in extra:
            r = extra["r"]
            if kind == 0:
                out[r > 0.72] = rgb(200, 20, 25)
            elif kind == 1:
                out[:] = rgb(20, 70, 170)
                out[r < 0.35] = rgb(235, 235, 235)
            else:
                out[r > 0.65] = rgb(210, 30, 30)
        return out

    return paint


def traffic_light_paint(lo: np.ndarray, hi: np.ndarray, state: int) -> Paint:
    colours = [rgb(255, 40, 30), rgb(255, 190, 30), rgb(40, 255, 120)]

    def paint(p, n, extra):
        rel = (p - lo) / (hi - lo)
        out = np.broadcast_to(rgb(25, 27, 25), p.shape).copy()
        facing = np.abs(n[:, 0]) > 0.5
        for i in range(3):
            zc = 0.8 - 0.3 * i
            lamp = facing & ((rel[:, 1] - 0.5) ** 2 * 4 + ((rel[:, 2] - zc) / 0.33) ** 2 * 4 < 0.25)
            out[lamp] = colours[i] if i == state else colours[i] * 0.25
        return out

    return paint

