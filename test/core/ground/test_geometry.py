"""Ground-plane projection: a camera over a flat road of known shape gives the known grid; the pose's
sign conventions (REP-103)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from msseg_core.ground.camera import CameraError, CameraPose, PinholeCamera
from msseg_core.ground.projection import FREE, OCCUPIED, UNKNOWN, GroundGridLookup

H, W = 480, 640
K = (500.0, 500.0, 320.0, 240.0)  # fx, fy, cx, cy


def camera(pose: CameraPose, **kwargs) -> PinholeCamera:
    fx, fy, cx, cy = K
    return PinholeCamera(W, H, (fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0), pose=pose, **kwargs)


def project_points(points, pose: CameraPose):
    return camera(pose).project(points)


def horizon_row(pose: CameraPose, u: float | None = None) -> float:
    return camera(pose).horizon_row(u)

# A road 7 m wide (y from -4 to 3) straight ahead with a side street 7 m wide to the left at 15..22 m.
ROAD_POLYGON = np.array([(3.0, -4.0), (60.0, -4.0), (60.0, 3.0), (22.0, 3.0), (22.0, 12.0), (15.0, 12.0),
                         (15.0, 3.0), (3.0, 3.0)])


def render_road(pose: CameraPose, polygon: np.ndarray = ROAD_POLYGON) -> np.ndarray:
    """Analytic road mask: the ground polygon's vertices projected, filled with sub-pixel precision.

    Straight ground edges stay straight under a pinhole, so this is exact while every vertex is in
    front of the camera (asserted)."""
    pts = np.column_stack([polygon, np.zeros(len(polygon))])
    u, v, depth = project_points(pts, pose)
    assert (depth > 0).all()
    shift = 8
    poly = np.round(np.column_stack([u, v]) * (1 << shift)).astype(np.int32)
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_8, shift=shift)
    return mask


def inside_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray = ROAD_POLYGON) -> np.ndarray:
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(contour, (float(a), float(b)), False) > 0 for a, b in zip(x, y, strict=True)])


@pytest.mark.parametrize("pose", [
    CameraPose(height=1.5, pitch=0.08),
    CameraPose(x=1.2, y=0.3, height=1.3, pitch=0.12, roll=0.03, yaw=-0.05),
])
def test_free_cells_match_the_analytic_road_footprint(pose: CameraPose) -> None:
    lookup = GroundGridLookup(camera(pose), resolution=0.2, length=40.0, width=24.0, max_range=30.0)
    grid = lookup.apply(render_road(pose))
    assert grid.dtype == np.int8 and grid.shape == lookup.shape == (120, 200)
    assert set(np.unique(grid)) <= {FREE, OCCUPIED, UNKNOWN}
    valid = lookup.valid
    assert valid.sum() > 1000
    truth = inside_polygon(lookup.cell_x[valid], lookup.cell_y[valid])
    free = grid[valid] == FREE
    iou = (free & truth).sum() / (free | truth).sum()
    assert iou >= 0.95, iou
    assert (grid[~valid] == UNKNOWN).all()
    # The side street is seen (to the left: larger y = higher rows).
    side = valid & (lookup.cell_x > 16) & (lookup.cell_x < 21) & (lookup.cell_y > 4) & (lookup.cell_y < 8)
    assert side.any() and (grid[side] == FREE).mean() > 0.9


def test_grid_layout_follows_occupancy_grid_convention() -> None:
    lookup = GroundGridLookup(camera(CameraPose(height=1.5, pitch=0.1)), resolution=0.5, length=10.0,
                              width=4.0, max_range=50.0, min_x=2.0)
    assert lookup.shape == (8, 16)
    assert lookup.origin == (2.0, -2.0, 0.0)
    # Column index runs along +x, row index along +y; centres half a cell in from the origin.
    assert lookup.cell_x[0, 0] == pytest.approx(2.25) and lookup.cell_y[0, 0] == pytest.approx(-1.75)
    assert lookup.cell_x[0, 1] == pytest.approx(2.75) and lookup.cell_y[1, 0] == pytest.approx(-1.25)
    # Row 0 (right of the vehicle) projects to the right half of the image.
    assert lookup.u[0, 5] > K[2] > lookup.u[-1, 5]


def test_behind_camera_and_above_horizon_never_free() -> None:
    all_road = np.full((H, W), 255, np.uint8)
    for pose in (CameraPose(x=5.0, height=1.5, pitch=0.1), CameraPose(height=1.5, pitch=-0.2),
                 CameraPose(height=1.5, pitch=0.1, yaw=math.pi / 2), CameraPose(height=2.0, pitch=0.3, roll=0.2)):
        lookup = GroundGridLookup(camera(pose), resolution=0.25, length=40.0, width=40.0, max_range=100.0)
        grid = lookup.apply(all_road)
        free = grid == FREE
        pts = np.column_stack([lookup.cell_x[free], lookup.cell_y[free], np.zeros(free.sum())])
        _, v, depth = project_points(pts, pose)
        assert (depth > 0).all()
        cam = camera(pose)
        horizon = np.array([cam.horizon_row(u) for u in lookup.u[free]])
        assert (v > horizon).all()
        # Cells behind the camera (in its own forward direction) are unknown.
        fwd = pose.rotation()[:, 0]
        behind = ((lookup.cell_x - pose.x) * fwd[0] + (lookup.cell_y - pose.y) * fwd[1]) < 0
        assert (grid[behind] == UNKNOWN).all()
    # Road painted only above the horizon gives no free cell at all.
    pose = CameraPose(height=1.5, pitch=0.1)
    sky_road = np.zeros((H, W), np.uint8)
    sky_road[: int(horizon_row(pose))] = 255
    assert not (GroundGridLookup(camera(pose)).apply(sky_road) == FREE).any()
    # A camera on the ground sees no ground plane.
    assert (GroundGridLookup(camera(CameraPose(height=0.0))).apply(all_road) == UNKNOWN).all()


def test_max_range_and_image_bounds() -> None:
    pose = CameraPose(height=1.5, pitch=0.1)
    lookup = GroundGridLookup(camera(pose), resolution=0.25, length=40.0, width=40.0, max_range=12.0)
    dist = np.hypot(lookup.cell_x, lookup.cell_y)
    assert not lookup.valid[dist > 12.0].any()
    assert ((lookup.u[lookup.valid] > -0.5) & (lookup.u[lookup.valid] < W - 0.5)).all()
    assert ((lookup.v[lookup.valid] > -0.5) & (lookup.v[lookup.valid] < H - 0.5)).all()


def test_pitch_sign_positive_looks_down() -> None:
    h, pitch = 1.5, 0.2
    pose = CameraPose(height=h, pitch=pitch)
    # The optical axis meets the ground h / tan(pitch) ahead: that point is at the principal point.
    u, v, _ = project_points([[h / math.tan(pitch), 0.0, 0.0]], pose)
    assert u[0] == pytest.approx(K[2], abs=1e-6) and v[0] == pytest.approx(K[3], abs=1e-6)
    # Looking down raises the horizon in the image above the centre: row cy - fy tan(pitch).
    assert horizon_row(pose) == pytest.approx(K[3] - K[1] * math.tan(pitch))
    u, v, _ = project_points([[1000.0, 0.0, h]], pose)  # far point at camera height: on the horizon
    assert v[0] == pytest.approx(K[3] - K[1] * math.tan(pitch), abs=1e-6)


def test_yaw_sign_positive_looks_left() -> None:
    yaw = 0.3
    pose = CameraPose(height=1.5, yaw=yaw)
    point = [[10.0 * math.cos(yaw), 10.0 * math.sin(yaw), 1.5]]  # ahead-left, at camera height
    u, v, _ = project_points(point, pose)
    assert u[0] == pytest.approx(K[2], abs=1e-6) and v[0] == pytest.approx(K[3], abs=1e-6)
    u0, _, _ = project_points([[10.0, 0.0, 1.5]], pose)  # straight ahead of the base: right of centre
    assert u0[0] > K[2]


def test_roll_sign_positive_moves_left_side_down() -> None:
    pose0, pose = CameraPose(height=1.5), CameraPose(height=1.5, roll=0.1)
    left, right = [10.0, 3.0, 1.5], [10.0, -3.0, 1.5]
    (_, v0, _), (_, v, _) = project_points([left, right], pose0), project_points([left, right], pose)
    assert v0[0] == pytest.approx(v0[1])
    assert v[0] > K[3] > v[1]  # left point moved down, right point up
    # Roll turns about the optical axis: the point straight ahead stays at the principal point.
    u, vv, _ = project_points([[10.0, 0.0, 1.5]], pose)
    assert u[0] == pytest.approx(K[2]) and vv[0] == pytest.approx(K[3])


def test_lookup_is_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = PinholeCamera.project

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    pose = CameraPose(height=1.5, pitch=0.08)
    mask = render_road(pose)
    monkeypatch.setattr(PinholeCamera, "project", counting)
    lookup = GroundGridLookup(camera(pose))
    grids = [lookup.apply(mask) for _ in range(20)]
    assert len(calls) == 1
    assert all((g == grids[0]).all() for g in grids)


def test_distortion_and_bad_inputs() -> None:
    pose = CameraPose(height=1.5, pitch=0.08)
    a = GroundGridLookup(camera(pose))
    b = GroundGridLookup(camera(pose, D=[0.0] * 5))
    assert np.array_equal(a.u, b.u)
    c = GroundGridLookup(camera(pose, D=[-0.2, 0.05, 0.0, 0.0, 0.0]))
    off = c.valid & (np.abs(a.u - K[2]) > 100)
    assert (np.abs(c.u[off] - K[2]) < np.abs(a.u[off] - K[2])).all()  # barrel distortion pulls inwards
    with pytest.raises(CameraError, match="fx > 0"):
        PinholeCamera(W, H, [0.0] * 9, pose=pose)
    with pytest.raises(ValueError, match="built for"):
        a.apply(np.zeros((H // 2, W // 2), np.uint8))
    with pytest.raises(ValueError, match="resolution"):
        GroundGridLookup(camera(pose), resolution=0.0)


@pytest.mark.parametrize("seed", [0, 2])
def test_synthetic_scene_road_lands_on_the_true_road_strip(seed: int) -> None:
    """Cross-check against an independent renderer: msseg_core.synthetic ray casts its own camera
    (height 1.5 m, pitch 3 degrees down); the road it labels must project onto its road strip."""
    from msseg_core import synthetic

    h, w = 240, 320
    _, labels = synthetic.render_scene(seed, w, h)
    info = synthetic.scene_info(seed)
    pose = CameraPose(height=info.camera_height, pitch=math.radians(info.pitch_deg))
    lookup = GroundGridLookup(PinholeCamera.from_hfov(w, h, 60.0, pose), resolution=0.2, length=30.0, width=20.0,
                              max_range=25.0)
    free = lookup.apply(labels == synthetic.ROAD) == FREE
    strip = (lookup.cell_y >= info.road_right) & (lookup.cell_y <= info.road_left)
    assert (free & strip).sum() / free.sum() >= 0.99  # what is free is road
    assert (free & strip).sum() / (strip & lookup.valid).sum() >= 0.8  # most visible road (cars hide some)
