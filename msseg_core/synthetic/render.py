"""The renderer of the synthetic street: one ray per pixel through the camera model, the nearest hit
gives the label and the lit, hazed, exposed colour; then the camera's blur and noise."""

from __future__ import annotations

import math

import cv2
import numpy as np

from msseg_core.ground.camera import PinholeCamera
from msseg_core.synthetic.shapes import NEAR, Shape, box_corners, cut
from msseg_core.synthetic.textures import hash01, noise, rgb
from msseg_core.synthetic.world import (
    BLOCK,
    BUILDING,
    PAVEMENT,
    ROAD,
    SKY,
    SKYLINE_DISTANCE,
    VIEW_DISTANCE,
    Look,
    SceneInfo,
    World,
    make_bicycle,
    make_car,
)


class Renderer:
    """Renders frames of a `World` seen by `camera` (its pose: the mounting above the ground)."""

    def __init__(self, camera: PinholeCamera):
        self.camera = camera
        h, w = camera.height, camera.width
        d = camera.rays(*np.meshgrid(np.arange(w), np.arange(h))).astype(np.float32)  # through pixel centres
        d[np.abs(d) < 1e-7] = 1e-7  # no exact zeros: 1 / d must be finite
        self.d = d
        self.inv = (1.0 / d).astype(np.float32)
        self.dist_scale = np.linalg.norm(d, axis=-1)  # t * this = distance in metres
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
        # World -> the camera's base frame (on the ground below it), then the camera model.
        u, v, depth = self.camera.project(box_corners(lo, hi) - origin + self.camera.pose.translation)
        h, w = self.camera.height, self.camera.width
        if (depth <= NEAR).all():
            return None
        if (depth <= 0.5).any():
            return slice(0, h), slice(0, w)
        u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, w)
        v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, h)
        if u0 >= u1 or v0 >= v1:
            return None
        return slice(v0, v1), slice(u0, u1)

    @staticmethod
    def _ground_albedo(info: SceneInfo, look: Look, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Asphalt with wheel tracks, patches and worn markings; kerb stones and tiled sidewalk."""
        half = info.road_width / 2
        lanes_half = info.lanes_width / 2
        on_road = np.abs(py) <= half
        tex = noise(px, py, 11, 24.0)
        road_col = look.asphalt * (1 + 0.18 * tex)[:, None]
        for lane in range(info.lanes):  # darker wheel tracks
            cy = -lanes_half + (lane + 0.5) * info.lane_width
            track = np.maximum(1.0 - ((np.abs(py - cy) - 0.8) / 0.35) ** 2, 0.0)
            road_col *= (1 - 0.12 * track)[:, None]
        patch = noise(px * 0.3, py, 23, 3.0) > 0.55
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
        wear = noise(px, py, 31, 30.0) > 0.25
        road_col = np.where((marking & ~wear)[:, None], rgb(215, 215, 205) * (1 + 0.05 * tex)[:, None], road_col)
        tiles = ((px % 0.6) < 0.025) | (((py + 0.3) % 0.6) < 0.025)
        pave = look.pavement * (1 + 0.12 * noise(px, py, 41, 18.0))[:, None]
        pave = np.where(tiles[:, None], pave * 0.8, pave)
        kerb = np.abs(py) - half < 0.22
        pave = np.where(kerb[:, None], np.minimum(look.pavement * 1.25, 1.0), pave)
        return np.where(on_road[:, None], road_col, pave).astype(np.float32)

    def _shadows(self, casters: list[np.ndarray], look: Look, origin: np.ndarray, gx: np.ndarray, gy: np.ndarray,
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

    def render(self, world: World, cam_x: float, t_sec: float, frame_salt: int) -> tuple[np.ndarray, np.ndarray]:
        """One frame at camera position `cam_x` and time `t_sec`: (H x W x 3 uint8 RGB, H x W labels).

        Passes in a fixed order (ground, skyline, objects, then the colours that depend on what stayed
        visible); the order is part of the output: the renderer is deterministic to the bit."""
        info, look = world.info, world.look
        h, w = self.camera.height, self.camera.width
        origin = np.array([cam_x, info.camera_y, info.camera_height], np.float32)
        ground, t_ground, gx, gy = self._ground_hits(origin)
        zbuf = t_ground.copy()
        label = np.full((h, w), SKY, np.uint8)
        colour = np.zeros((h, w, 3), np.float32)
        # ground: labels now, colours once we know which ground pixels stay visible
        label[ground] = np.where(np.abs(gy[ground]) <= info.road_width / 2, ROAD, PAVEMENT)
        self._draw_skyline(world, origin, zbuf, label, colour)
        shapes, casters = _objects_in_view(world, cam_x, t_sec)
        for shape in shapes:
            self._draw_shape(shape, look, origin, cam_x, zbuf, label, colour)
        gvis = ground & (zbuf == t_ground)
        if gvis.any():
            self._light_ground(info, look, casters, origin, gx[gvis], gy[gvis], gvis, colour)
        sky = label == SKY
        if sky.any():
            colour[sky] = self._sky_colour(look, origin, sky)
        colour = self._haze(look, sky, zbuf, colour)
        return self._expose(look, colour, frame_salt), label

    def _ground_hits(self, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rays that hit the ground plane z = 0, their ray parameter t (inf for the others), and the
        hit's world x and y). The ground is the farthest surface: it seeds the depth buffer."""
        d = self.d
        dz = d[..., 2]
        ground = dz < 0
        t_ground = np.where(ground, -origin[2] / np.where(ground, dz, -1.0), np.inf).astype(np.float32)
        gx = origin[0] + t_ground * d[..., 0]
        gy = origin[1] + t_ground * d[..., 1]
        return ground, t_ground, gx, gy

    def _draw_skyline(self, world: World, origin: np.ndarray, zbuf: np.ndarray, label: np.ndarray,
                      colour: np.ndarray) -> None:
        """A distant row of flat building fronts at SKYLINE_DISTANCE, of hashed heights: it closes the
        view, so the horizon is never an empty ground plane meeting the sky."""
        d, inv, look = self.d, self.inv, world.look
        sky_x = origin[0] + SKYLINE_DISTANCE
        t_sky = (sky_x - origin[0]) * inv[..., 0]
        sy = origin[1] + t_sky * d[..., 1]
        sz = origin[2] + t_sky * d[..., 2]
        col_id = np.floor(sy / 14.0).astype(np.int64)
        sk_h = 12.0 + 38.0 * hash01(col_id, np.zeros_like(col_id), world.seed + 99) ** 2
        sk = (t_sky > 0) & (sz <= sk_h) & (t_sky < zbuf)
        zbuf[sk] = t_sky[sk]
        label[sk] = BUILDING
        base = look.sky_horizon * 0.75
        colour[sk] = base * (0.85 + 0.15 * hash01(col_id[sk], np.ones_like(col_id[sk]), world.seed))[:, None]

    def _draw_shape(self, shape: Shape, look: Look, origin: np.ndarray, cam_x: float, zbuf: np.ndarray,
                    label: np.ndarray, colour: np.ndarray) -> None:
        """Ray cast one shape within the pixel rectangle it can cover; where it is nearer than what the
        depth buffer holds, write its depth, label and lit colour (sun and sky light, no shadows)."""
        if shape.hi[0] < cam_x - 8 or shape.lo[0] > cam_x + VIEW_DISTANCE + 20:
            return
        region = self._region(shape.lo, shape.hi, origin)
        if region is None:
            return
        dr, ir = self.d[region], self.inv[region]
        t, hit, extra = shape.intersect(origin, dr, ir)
        zb = zbuf[region]
        m = hit & (t < zb)
        if not m.any():
            return
        tm = t[m]
        dm = dr[m]
        p = origin + tm[:, None] * dm
        ex = cut(extra, m)
        n = shape.normals(p, dm, ex)
        lam = np.maximum((n * look.sun).sum(1), 0.0) * look.sun_strength
        up = 0.75 + 0.25 * n[:, 2]  # sky light comes from above
        col = shape.paint(p, n, ex) * (look.ambient * up + lam)[:, None]
        zb[m] = tm
        label[region][m] = shape.label
        colour[region][m] = col

    def _light_ground(self, info: SceneInfo, look: Look, casters: list[np.ndarray], origin: np.ndarray,
                      gx: np.ndarray, gy: np.ndarray, gvis: np.ndarray, colour: np.ndarray) -> None:
        """Colour the visible ground pixels (`gvis`, world points gx, gy): albedo, then ambient light
        dimmed by occlusion and sun light blocked by cast shadows."""
        colour[gvis] = self._ground_albedo(info, look, gx, gy)
        lit, ao = self._shadows(casters, look, origin, gx, gy, not info.overcast)
        light = look.ambient * (1 - 0.45 * ao) + look.sun_strength * look.sun[2] * lit
        colour[gvis] *= light[:, None]

    def _sky_colour(self, look: Look, origin: np.ndarray, sky: np.ndarray) -> np.ndarray:
        """Colours of the sky pixels: a horizon-to-zenith gradient, clouds on a plane high above the
        camera (they drift past as it moves) and a glow around the sun."""
        ds = self.d[sky] / self.dist_scale[sky][:, None]
        elev = np.clip(ds[:, 2], 0, 1)
        g = np.sqrt(elev)[:, None]
        sc = look.sky_horizon * (1 - g) + look.sky_zenith * g
        tc = 2000.0 / np.maximum(ds[:, 2], 0.02)
        cx, cy = origin[0] * 0.1 + ds[:, 0] * tc, ds[:, 1] * tc
        cloud = np.clip((noise(cx, cy, 55, 0.01) + 0.6 * look.cloudiness - 0.25) * 2.2, 0, 1)
        cloud *= np.clip(elev * 8, 0, 1) * (0.3 + 0.7 * look.cloudiness)
        cc = np.array([0.93, 0.93, 0.95], np.float32) * (0.85 + 0.15 * noise(cx, cy, 56, 0.03))[:, None]
        sc = sc * (1 - cloud[:, None]) + cc * cloud[:, None]
        glow = np.clip((ds @ look.sun), 0, 1) ** 40 * (1 - look.cloudiness * 0.7)
        return sc + glow[:, None] * 0.6

    def _haze(self, look: Look, sky: np.ndarray, zbuf: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """Fade everything but the sky towards the horizon colour with distance (aerial perspective)."""
        dist = np.where(sky, np.inf, zbuf * self.dist_scale)
        fade = (1.0 - np.exp(-dist / look.haze))[..., None]
        return np.where(sky[..., None], colour, colour * (1 - fade) + look.sky_horizon * fade)

    def _expose(self, look: Look, colour: np.ndarray, frame_salt: int) -> np.ndarray:
        """The camera: exposure, white balance, vignette, tone curve, lens blur and sensor noise (a
        per-frame window of one fixed noise buffer), to uint8 RGB. `colour` is modified in place."""
        h, w = self.camera.height, self.camera.width
        colour *= look.exposure * look.white
        colour *= self.vignette
        colour = np.clip(colour, 0, 1.2)
        colour = colour / (1 + 0.25 * colour) * 1.25  # soft shoulder
        img = np.clip(colour, 0, 1) ** (1 / 1.15) * 255.0
        sigma = 0.5 + 0.2 * min(w, h) / 360
        img = cv2.GaussianBlur(img, (0, 0), sigma)
        start = (frame_salt * 7919) % 4096
        img += self.noise[start:start + img.size].reshape(img.shape)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _objects_in_view(world: World, cam_x: float, t_sec: float) -> tuple[list[Shape], list[np.ndarray]]:
    """The shapes that may be seen from `cam_x` at `t_sec` and the point sets that cast their shadows:
    the static objects of the blocks in view, and the traffic where it has driven to by then (from
    neighbouring blocks too). The order of the shapes decides ties in depth: it is kept stable."""
    info = world.info
    shapes: list[Shape] = []
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
                car = make_car(x, y, heading, salt)
                shapes += car
                casters.append(box_corners(car[0].lo, car[1].hi))
        for x_start, y, speed, salt in blk.riders:
            x = x_start + speed * t_sec
            if -3 < x - cam_x < VIEW_DISTANCE:
                shapes += make_bicycle(x, y, salt)
    return shapes, casters
