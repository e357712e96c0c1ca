"""The synthetic street of one seed: what the seed fixes (`SceneInfo`, the appearance), and the objects
standing in it, generated lazily block by block along the road."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from msseg_core.ground.camera import CameraPose
from msseg_core.synthetic.shapes import Box, Cylinder, Ellipsoid, Planar, Shape, SignPlate, box_corners, sphere_points
from msseg_core.synthetic.textures import (
    car_paint,
    facade_paint,
    flat_paint,
    foliage_paint,
    rgb,
    sign_paint,
    traffic_light_paint,
)

# CamVid (SegNet 11-class) ids, see msseg_core.classes.CAMVID.
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
NUM_CLASSES = 11

CAMERA_HEIGHT = 1.5
"""Camera height above the ground plane, metres."""
CAMERA_PITCH_DEG = 3.0
"""Camera pitch, degrees, positive = looking down (as `camera.CameraPose.pitch`)."""
DEFAULT_HFOV_DEG = 60.0
"""Horizontal field of view of the default camera, degrees."""

VIEW_DISTANCE = 150.0  # objects are generated up to this far ahead of the camera
SKYLINE_DISTANCE = 450.0  # a distant row of buildings closes the view
BLOCK = 50.0  # the world is generated lazily in blocks of this length along x


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

    def camera_pose(self) -> CameraPose:
        """The camera mounting, base frame on the ground below the camera."""
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
class Look:
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


FACADES = [rgb(165, 90, 70), rgb(190, 180, 160), rgb(140, 140, 145), rgb(210, 200, 185),
            rgb(120, 70, 55), rgb(175, 160, 130), rgb(100, 100, 110), rgb(200, 170, 140),
            rgb(230, 225, 215), rgb(150, 120, 100)]
CAR_COLOURS = [rgb(200, 200, 205), rgb(30, 30, 35), rgb(150, 20, 25), rgb(20, 50, 120), rgb(235, 235, 235),
                rgb(90, 95, 100), rgb(120, 130, 140), rgb(40, 80, 50), rgb(210, 170, 40), rgb(60, 30, 20)]
CLOTHES = [rgb(30, 30, 40), rgb(150, 30, 30), rgb(40, 60, 120), rgb(200, 200, 190), rgb(90, 80, 60),
            rgb(60, 110, 70), rgb(170, 120, 40), rgb(20, 20, 20)]
SKIN = [rgb(230, 190, 160), rgb(190, 140, 110), rgb(120, 80, 60), rgb(90, 60, 45)]


def scene_and_look(seed: int) -> tuple[SceneInfo, Look]:
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
        zen, hor = rgb(150, 155, 165), rgb(205, 208, 212)
        look = Look(sun, float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.8, 0.95)), zen, hor,
                     float(rng.uniform(0.6, 1.0)), float(rng.uniform(250, 500)), float(rng.uniform(0.85, 1.1)),
                     white.astype(np.float32), rgb(95, 95, 98), rgb(150, 148, 145))
    else:
        zen = rgb(40, 95, 185) * rng.uniform(0.85, 1.15)
        hor = rgb(175, 200, 225) * rng.uniform(0.92, 1.05)
        look = Look(sun, float(rng.uniform(0.5, 0.75)), float(rng.uniform(0.45, 0.6)), zen.astype(np.float32),
                     hor.astype(np.float32), float(rng.uniform(0.0, 0.55)), float(rng.uniform(500, 1100)),
                     float(rng.uniform(0.8, 1.05)), white.astype(np.float32), rgb(80, 80, 84) * rng.uniform(0.85, 1.2),
                     rgb(160, 155, 150) * rng.uniform(0.85, 1.1))
    look.facades = [FACADES[i] for i in rng.permutation(len(FACADES))[:6]]
    return info, look



# -- the world ------------------------------------------------------------------------------------
def make_person(x: float, y: float, salt: int, label: int, scale: float = 1.0, riding: bool = False) -> list[Shape]:
    """A pedestrian (or the rider of a bicycle) as a few boxes and a head."""
    rng = np.random.default_rng(salt)
    top, bottom = CLOTHES[rng.integers(len(CLOTHES))], CLOTHES[rng.integers(len(CLOTHES))]
    skin = SKIN[rng.integers(len(SKIN))]
    hair = rgb(30, 20, 15) * rng.uniform(0.6, 2.5)
    s = scale
    shapes: list[Shape] = []
    z_hip = (0.85 if not riding else 1.0) * s
    if not riding:
        stride = float(rng.uniform(-0.18, 0.18))
        for dy, dx in ((-0.1, stride), (0.1, -stride)):
            shapes.append(Box([x + dx - 0.08, y + dy - 0.07, 0.0], [x + dx + 0.08, y + dy + 0.07, z_hip], label,
                               flat_paint(bottom, salt, 0.1)))
    else:
        for dy in (-0.1, 0.1):
            shapes.append(Box([x - 0.25, y + dy - 0.06, 0.45], [x - 0.05, y + dy + 0.06, z_hip], label,
                               flat_paint(bottom, salt, 0.1)))
    lean = 0.15 if riding else 0.0
    shapes.append(Box([x - 0.13 + lean, y - 0.21 * s, z_hip], [x + 0.13 + lean, y + 0.21 * s, z_hip + 0.6 * s], label,
                       flat_paint(top, salt + 1, 0.1)))
    for dy in (-0.27, 0.27):
        shapes.append(Box([x - 0.06 + lean, y + dy * s - 0.05, z_hip + 0.05], [x + 0.06 + lean, y + dy * s + 0.05,
                                                                               z_hip + 0.58 * s], label,
                           flat_paint(top, salt + 2, 0.1)))
    head_z = z_hip + 0.6 * s + 0.13 * s
    shapes.append(Ellipsoid([x + lean, y, head_z], [0.1 * s, 0.09 * s, 0.12 * s], label,
                             lambda p, n, e, _c=skin, _h=hair, _z=head_z: np.where(
                                 (p[:, 2] > _z + 0.02)[:, None], _h, _c).astype(np.float32)))
    return shapes


def make_bicycle(x: float, y: float, salt: int) -> list[Shape]:
    """Two spoked wheels (rings in the plane y = const), a frame, and a rider: all Bicyclist."""
    frame_col = CAR_COLOURS[salt % len(CAR_COLOURS)]
    shapes: list[Shape] = []
    r_out, r_in = 0.34, 0.29
    for wx in (x - 0.55, x + 0.55):
        def ring(a, b, _wx=wx):  # a = x, b = z (the plane's other coordinates)
            rr = (a - _wx) ** 2 + (b - r_out) ** 2
            spoke = (np.abs(a - _wx) < 0.015) | (np.abs(b - r_out) < 0.015)
            return (rr <= r_out ** 2) & ((rr >= r_in ** 2) | spoke)

        shapes.append(Planar(1, y, [wx - r_out, y, 0.0], [wx + r_out, y, 2 * r_out], BICYCLIST,
                              flat_paint(rgb(20, 20, 20), salt, 0.05), ring))
    shapes.append(Box([x - 0.5, y - 0.03, 0.5], [x + 0.5, y + 0.03, 0.56], BICYCLIST, flat_paint(frame_col, salt)))
    shapes.append(Box([x - 0.1, y - 0.03, 0.3], [x - 0.04, y + 0.03, 0.95], BICYCLIST, flat_paint(frame_col, salt)))
    shapes.append(Box([x + 0.45, y - 0.25, 0.95], [x + 0.5, y + 0.25, 1.0], BICYCLIST,
                       flat_paint(rgb(30, 30, 30), salt)))
    shapes += make_person(x - 0.1, y, salt + 5, BICYCLIST, 0.95, riding=True)
    return shapes


def make_car(x: float, y: float, heading: int, salt: int) -> list[Shape]:
    """A car centred at (x, y) on the road: body, cabin, four wheels (road visible underneath)."""
    rng = np.random.default_rng(salt)
    length, width = float(rng.uniform(3.9, 4.8)), float(rng.uniform(1.7, 1.9))
    colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
    body_top = float(rng.uniform(0.95, 1.1))
    van = rng.random() < 0.15
    cabin_top = body_top + (float(rng.uniform(0.45, 0.55)) if not van else 0.9)
    lo, hi = np.array([x - length / 2, y - width / 2, 0.28]), np.array([x + length / 2, y + width / 2, body_top])
    rear = heading > 0  # same direction as the camera: we see its rear
    shapes: list[Shape] = [Box(lo, hi, CAR, car_paint(colour, lo, hi, rear, "body", salt))]
    front_gap, back_gap = (1.25, 0.75) if not van else (0.7, 0.1)
    if heading < 0:
        front_gap, back_gap = back_gap, front_gap
    clo = np.array([lo[0] + back_gap, lo[1] + 0.08, body_top])
    chi = np.array([hi[0] - front_gap, hi[1] - 0.08, cabin_top])
    shapes.append(Box(clo, chi, CAR, car_paint(colour, clo, chi, rear, "cabin", salt)))
    for wx in (x - length / 2 + 0.75, x + length / 2 - 0.75):
        for wy in (y - width / 2 + 0.12, y + width / 2 - 0.12):
            wlo = np.array([wx - 0.33, wy - 0.13, 0.0])
            whi = np.array([wx + 0.33, wy + 0.13, 0.62])
            shapes.append(Box(wlo, whi, CAR, car_paint(colour, wlo, whi, rear, "wheel", salt)))
    return shapes


@dataclass
class Block:
    static: list[Shape]
    cars: list[tuple[float, float, float, int, int]]  # (x0, y, speed, heading, salt) of moving traffic
    riders: list[tuple[float, float, float, int]]  # (x0, y, speed, salt)
    casters: list[np.ndarray]  # K x 3 points whose convex hull casts a shadow on the ground


class World:
    """The endless street of one seed, generated block by block on demand (cached)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.info, self.look = scene_and_look(seed)
        self._blocks: dict[int, Block] = {}

    def block(self, b: int) -> Block:
        if b not in self._blocks:
            if len(self._blocks) > 16:
                self._blocks.pop(min(self._blocks))
            self._blocks[b] = self._make_block(b)
        return self._blocks[b]

    def _make_block(self, b: int) -> Block:
        """Block `b` (x in [b * BLOCK, (b + 1) * BLOCK)): each side's buildings, street furniture and
        parked cars, then the moving traffic, all drawn from the block's own generator."""
        rng = np.random.default_rng([self.seed, 2, b & 0xFFFFFFFF])
        builder = _BlockBuilder(self.info, self.look, rng, b * BLOCK, (b + 1) * BLOCK)
        for side in (1, -1):  # left (+y), right (-y)
            builder.add_buildings(side)
            builder.add_street_furniture(side)
            builder.add_parked_cars(side)
        cars = builder.moving_cars()
        riders = builder.cyclists()
        return Block(builder.static, cars, riders, builder.casters)


class _BlockBuilder:
    """Collects the static shapes and shadow casters of one block of the street.

    Every method draws from the block's one generator, so the order of the calls and of the draws
    inside them is part of what a seed looks like: reordering them changes every scene."""

    def __init__(self, info: SceneInfo, look: Look, rng: np.random.Generator, x0: float, x1: float):
        self.info, self.look, self.rng = info, look, rng
        self.half = info.road_width / 2
        self.walk = info.sidewalk_width
        self.x0, self.x1 = x0, x1
        self.static: list[Shape] = []
        self.casters: list[np.ndarray] = []
        self.style_salt = int(rng.integers(1 << 30))

    # -- buildings --------------------------------------------------------------------------------
    def add_buildings(self, side: int) -> None:
        """Facades along one side (+1 left, -1 right), with gaps for plazas and side streets."""
        rng = self.rng
        x = self.x0
        while x < self.x1:
            length = float(rng.uniform(8, 26))
            if rng.random() < 0.18:  # a gap between buildings (a plaza or a side street)
                x += float(rng.uniform(3, 9))
                continue
            xe = min(x + length, self.x1)
            setback = self._add_building(side, x, xe)
            if setback > 1.2 and rng.random() < 0.6:  # a fence in front of a set-back building
                self._add_fence(side, x, xe)
            x = xe + (0.0 if rng.random() < 0.6 else float(rng.uniform(0.5, 2.0)))

    def _add_building(self, side: int, x: float, xe: float) -> float:
        """One building from x to xe behind the sidewalk; returns its set-back from the sidewalk."""
        rng = self.rng
        setback = float(rng.choice([0.0, 0.0, rng.uniform(0.5, 4.0)]))
        height = float(rng.uniform(6, 26)) if rng.random() < 0.9 else float(rng.uniform(28, 45))
        depth = float(rng.uniform(10, 20))
        inner = self.half + self.walk + setback
        ylo, yhi = (inner, inner + depth) if side > 0 else (-inner - depth, -inner)
        lo, hi = np.array([x, ylo, 0.0]), np.array([xe, yhi, height])
        colour = self.look.facades[int(rng.integers(len(self.look.facades)))] * rng.uniform(0.85, 1.1)
        style = int(rng.integers(3))
        self.static.append(Box(lo, hi, BUILDING, facade_paint(colour.astype(np.float32), lo, hi,
                                                              self.style_salt + int(x * 10), style)))
        self.casters.append(box_corners(lo, hi))
        return setback

    def _add_fence(self, side: int, x: float, xe: float) -> None:
        """A slatted fence with two rails along the back of the sidewalk, from x to xe."""
        rng = self.rng
        fy = side * (self.half + self.walk + 0.1)
        fh = float(rng.uniform(0.9, 1.6))
        pitch, slat = float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.3, 0.6))

        def fence_mask(a, zc, _p=pitch, _s=slat, _h=fh):
            rails = (np.abs(zc - 0.15) < 0.04) | (np.abs(zc - (_h - 0.08)) < 0.04)
            return ((a / _p) % 1.0 < _s) | rails

        fcol = rgb(60, 60, 55) if rng.random() < 0.5 else rgb(150, 110, 70)
        self.static.append(Planar(1, fy, [x + 0.3, fy, 0.0], [xe - 0.3, fy, fh], FENCE,
                                  flat_paint(fcol, self.style_salt, 0.15), fence_mask))

    # -- street furniture -------------------------------------------------------------------------
    def add_street_furniture(self, side: int) -> None:
        """Slots every 6 m along the kerb: a tree, a street light, a sign, a traffic light or nothing;
        now and then a pedestrian on the sidewalk next to the slot."""
        rng = self.rng
        kerb = side * (self.half + 0.45)
        for slot in np.arange(self.x0 + 2.0, self.x1, 6.0):
            r = rng.random()
            sx = float(slot + rng.uniform(-1, 1))
            if r < 0.22:
                self._add_tree(side, sx)
            elif r < 0.34:
                self._add_street_light(side, sx, kerb)
            elif r < 0.5:
                self._add_sign(sx, kerb)
            elif r < 0.56:
                self._add_traffic_light(sx, kerb)
            if rng.random() < 0.3:  # pedestrian somewhere on the sidewalk
                py = side * (self.half + float(rng.uniform(0.6, self.walk - 0.3)))
                px = float(slot + rng.uniform(2, 4))
                self.static += make_person(px, py, int(rng.integers(1 << 30)), PEDESTRIAN,
                                           float(rng.uniform(0.85, 1.1)))

    def _add_tree(self, side: int, sx: float) -> None:
        """A trunk and two or three overlapping foliage ellipsoids; the crown casts a shadow."""
        rng, salt = self.rng, self.style_salt
        ty = side * (self.half + min(self.walk * 0.55, 1.4))
        trunk_h = float(rng.uniform(2.0, 3.2))
        self.static.append(Cylinder(sx, ty, float(rng.uniform(0.12, 0.2)), 0.0, trunk_h + 0.8, TREE,
                                    flat_paint(rgb(75, 60, 45), salt, 0.2, 12.0)))
        green = rgb(55, 95, 40) * rng.uniform(0.75, 1.25, 3)
        rad = float(rng.uniform(1.4, 2.6))
        for k in range(int(rng.integers(2, 4))):
            off = rng.uniform(-0.6, 0.6, 3) * rad
            c = [sx + off[0], ty + off[1] * 0.6, trunk_h + rad + off[2] * 0.5]
            self.static.append(Ellipsoid(c, np.array([rad, rad, rad * 1.1]) * rng.uniform(0.7, 1.0), TREE,
                                         foliage_paint(green.astype(np.float32), salt + k)))
        self.casters.append(sphere_points([sx, ty, trunk_h + rad], rad))

    def _add_street_light(self, side: int, sx: float, kerb: float) -> None:
        """A pole at the kerb with an arm reaching over the road and a lamp head."""
        h = float(self.rng.uniform(6.5, 9.0))
        self.static.append(Cylinder(sx, kerb, 0.09, 0.0, h, POLE, flat_paint(rgb(95, 100, 100), 3, 0.08)))
        arm = -side * 1.6
        ylo, yhi = sorted((kerb, kerb + arm))
        self.static.append(Box([sx - 0.05, ylo, h - 0.1], [sx + 0.05, yhi, h], POLE,
                               flat_paint(rgb(95, 100, 100), 3, 0.05)))
        self.static.append(Box([sx - 0.2, kerb + arm - 0.35, h - 0.25], [sx + 0.2, kerb + arm + 0.1, h - 0.05],
                               POLE, flat_paint(rgb(70, 72, 75), 3, 0.05)))

    def _add_sign(self, sx: float, kerb: float) -> None:
        """A post with a round or triangular plate facing the camera (the plate is Sign, the post Pole)."""
        rng = self.rng
        h = float(rng.uniform(2.2, 3.0))
        self.static.append(Cylinder(sx, kerb, 0.04, 0.0, h, POLE, flat_paint(rgb(140, 140, 140), 4, 0.05)))
        kind = int(rng.integers(3))
        size = float(rng.uniform(0.3, 0.45))
        cy, cz = kerb, h + size

        def sign_mask(a, b_, _cy=cy, _cz=cz, _s=size, _k=kind):
            if _k == 2:  # warning triangle, apex up
                return (b_ - _cz >= -_s * 0.5) & (b_ - _cz <= _s - 1.7 * np.abs(a - _cy))
            return (a - _cy) ** 2 + (b_ - _cz) ** 2 <= _s * _s

        plate = Planar(0, sx, [sx, cy - size, cz - size], [sx, cy + size, cz + size], SIGN,
                       sign_paint(kind), sign_mask)
        self.static.append(SignPlate(plate, cy, cz, size))

    def _add_traffic_light(self, sx: float, kerb: float) -> None:
        """A pole with a signal head showing one of three states."""
        rng = self.rng
        h = float(rng.uniform(2.8, 3.4))
        self.static.append(Cylinder(sx, kerb, 0.07, 0.0, h, POLE, flat_paint(rgb(40, 42, 40), 5, 0.05)))
        box_lo, box_hi = np.array([sx - 0.15, kerb - 0.17, h]), np.array([sx + 0.15, kerb + 0.17, h + 0.9])
        self.static.append(Box(box_lo, box_hi, SIGN, traffic_light_paint(box_lo, box_hi, int(rng.integers(3)))))

    # -- cars -------------------------------------------------------------------------------------
    def add_parked_cars(self, side: int) -> None:
        """Cars on the parking strip next to the kerb (when the street has one), facing the camera on
        the left and away from it on the right."""
        info, rng = self.info, self.rng
        if info.parking_width > 0:
            for px in np.arange(self.x0 + rng.uniform(0, 8), self.x1 - 3, rng.uniform(5.5, 9.0)):
                if rng.random() < 0.65:
                    py = side * (self.half - info.parking_width / 2)
                    shapes = make_car(float(px), py, -side, int(rng.integers(1 << 30)))
                    self.static += shapes
                    self.casters.append(box_corners(shapes[0].lo, shapes[1].hi))

    def moving_cars(self) -> list[tuple[float, float, float, int, int]]:
        """Moving traffic, placed when it is seen: (x at t=0, y, world speed, heading, salt) per car.
        With two or more lanes the left half is oncoming."""
        info, rng = self.info, self.rng
        cars: list[tuple[float, float, float, int, int]] = []
        for lane in range(info.lanes):
            lane_y = -info.lanes_width / 2 + (lane + 0.5) * info.lane_width
            oncoming = info.lanes >= 2 and lane >= info.lanes // 2
            for _ in range(int(rng.poisson(0.9))):
                cars.append((float(rng.uniform(self.x0, self.x1)), lane_y + float(rng.uniform(-0.2, 0.2)),
                             -10.0 if oncoming else 8.0, -1 if oncoming else 1, int(rng.integers(1 << 30))))
        return cars

    def cyclists(self) -> list[tuple[float, float, float, int]]:
        """Sometimes a cyclist near the right edge of the lanes: (x at t=0, y, speed, salt)."""
        rng = self.rng
        riders = []
        if rng.random() < 0.35:
            riders.append((float(rng.uniform(self.x0, self.x1)), -self.info.lanes_width / 2 + 0.7, 5.0,
                           int(rng.integers(1 << 30))))
        return riders
