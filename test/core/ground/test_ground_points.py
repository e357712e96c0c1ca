"""Ground points from a label image (flat ground, the column rule), the path planner over a road grid,
and the fusion of several cameras' grids: pure numpy, no ROS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msseg_core.ground.camera import CameraPose, PinholeCamera
from msseg_core.ground.planner import cell_of, farthest_free_goal, passable, plan_path
from msseg_core.ground.points import GroundPointLookup, class_lut, ground_points
from msseg_core.ground.projection import FREE, OCCUPIED, UNKNOWN, GroundGridLookup, grid_layout
from msseg_ros.node.fused_grid import FusedGrid, fuse

ROAD, PAVEMENT, CAR, SKY = 3, 4, 8, 0
H, W = 120, 160


def camera(pose: CameraPose | None = None) -> PinholeCamera:
    return PinholeCamera.from_hfov(W, H, 70.0, pose or CameraPose(height=1.5, pitch=0.15))


def street() -> np.ndarray:
    """Sky above the horizon, road below, a pavement strip on the right, a car in the middle columns."""
    labels = np.full((H, W), SKY, np.uint8)
    labels[60:] = ROAD
    labels[60:, 130:] = PAVEMENT
    labels[70:95, 60:100] = CAR  # its lowest row (contact with the road) is 94
    return labels


def test_a_ground_point_projects_back_to_its_pixel() -> None:
    cam = camera(CameraPose(x=1.0, y=0.5, height=1.4, pitch=0.12, yaw=0.3))
    lookup = GroundPointLookup(cam, step=4, max_range=40.0)
    rows, cols = np.nonzero(lookup.valid)
    assert rows.size > 100
    xy = lookup.xy[rows, cols].astype(np.float64)
    u, v, depth = cam.project(np.c_[xy, np.zeros(len(xy))])
    np.testing.assert_allclose(u, cols * 4, atol=1e-3)
    np.testing.assert_allclose(v, rows * 4, atol=1e-3)
    assert (depth > 0).all()
    # Rows above the horizon never meet the ground; points beyond max_range are left out.
    assert not lookup.valid[: int(cam.horizon_row() // 4) - 1].any()
    assert np.hypot(xy[:, 0] - 1.0, xy[:, 1] - 0.5).max() <= 40.0


def test_columns_stop_at_the_first_obstacle_and_carry_class_ids() -> None:
    lookup = GroundPointLookup(camera(), step=2, max_range=50.0)
    ground, drivable = class_lut([ROAD, PAVEMENT]), class_lut([ROAD])
    pts = ground_points(street(), lookup, ground, drivable)
    small = street()[::2, ::2]
    assert pts.organized.shape == (*small.shape, 3) and np.array_equal(pts.organized_classes, small)
    # The car's columns: one obstacle point per column, at the car's lowest sampled row, classed Car.
    car_cols = range(30, 50)
    assert (pts.obstacle_classes[np.isin(pts.obstacle_classes, [CAR])]).size == len(car_cols)
    for c in car_cols:
        col = pts.organized[:, c]
        known = np.flatnonzero(np.isfinite(col[:, 0]))
        assert known.min() == 94 // 2  # the contact row; everything above it is unknown
    # Pavement is ground (not an obstacle) but not drivable: in `ground`, not in the drivable points.
    assert PAVEMENT in pts.ground_classes and PAVEMENT not in pts.obstacle_classes
    assert set(pts.ground_classes[pts.drivable]) == {ROAD}
    # Road columns without a car stop at the sky (its first pixel above the horizon has no ground point).
    assert CAR not in pts.ground_classes and (pts.obstacles[:, 2] == 0).all()
    # Every obstacle and ground point lies ahead of the camera on the ground.
    assert (pts.obstacles[:, 0] > 0).all() and (pts.ground[:, 0] > 0).all()


def test_points_match_the_grid_lookup() -> None:
    """The car's contact points are where the road grid, made from the same labels, turns from road to
    obstacle along each ray: a cell half a metre nearer the camera is free, half a metre farther is not."""
    cam = camera()
    labels = street()
    lookup = GroundPointLookup(cam, step=1, max_range=50.0)
    pts = ground_points(labels, lookup, class_lut([ROAD, PAVEMENT]), class_lut([ROAD]))
    grid = GroundGridLookup(cam, resolution=0.1, length=30.0, width=16.0, max_range=50.0)
    cells = grid.apply((labels == ROAD).astype(np.uint8) * 255)
    car = pts.obstacles[pts.obstacle_classes == CAR][:, :2].astype(np.float64)
    ray = car - np.array([cam.pose.x, cam.pose.y])
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    near = [cells[cell_of(*p, grid.origin[:2], grid.resolution)] for p in car - 0.5 * ray]
    far = [cells[cell_of(*p, grid.origin[:2], grid.resolution)] for p in car + 0.5 * ray]
    assert len(car) == 40 and all(v == FREE for v in near) and all(v == OCCUPIED for v in far)


def test_lookup_and_labels_must_agree_in_size() -> None:
    with pytest.raises(ValueError, match="lookup was built"):
        ground_points(np.zeros((10, 10), np.uint8), GroundPointLookup(camera()), class_lut([ROAD]), class_lut([ROAD]))
    with pytest.raises(ValueError):
        GroundPointLookup(camera(), step=0)


# -- the planner ------------------------------------------------------------------------------------
def corridor() -> np.ndarray:
    """20 rows (y) x 60 cols (x): free lane rows 6..13, occupied elsewhere, unknown far right columns."""
    cells = np.full((20, 60), OCCUPIED, np.int8)
    cells[6:14, :] = FREE
    cells[:, 55:] = UNKNOWN
    return cells


def test_the_path_stays_on_free_cells_and_is_shortest() -> None:
    cells = corridor()
    path = plan_path(cells, (10, 0), (10, 50))
    assert path.found and path.cells[0] == (10, 0) and path.cells[-1] == (10, 50)
    assert all(cells[r, c] == FREE for r, c in path.cells)
    assert path.cost_cells == pytest.approx(50.0)  # a straight lane: 50 steps
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1 for a, b in zip(path.cells, path.cells[1:], strict=False))


def test_a_parked_car_is_avoided_or_no_path_is_reported() -> None:
    cells = corridor()
    cells[6:11, 25:30] = OCCUPIED  # a car on the left half of the lane
    path = plan_path(cells, (10, 0), (10, 50), clearance_cells=1)
    assert path.found and all(passable(cells, 1)[r, c] for r, c in path.cells[1:])
    assert any(r >= 12 for r, c in path.cells if 25 <= c < 30)  # it goes around on the right
    cells[6:14, 25:30] = OCCUPIED  # now across the whole lane
    blocked = plan_path(cells, (10, 0), (10, 50))
    assert not blocked.found and blocked.cells == [] and math.isinf(blocked.cost_cells)
    # Unknown cells are not passable unless asked.
    assert not plan_path(corridor(), (10, 0), (10, 57)).found
    assert plan_path(corridor(), (10, 0), (10, 57), unknown_passable=True).found


def test_goal_ahead_and_cells() -> None:
    cells = corridor()
    assert farthest_free_goal(cells, (10, 0), lane_rows=3) == (10, 54)
    assert cell_of(1.05, -0.95, (0.0, -1.0), 0.1) == (0, 10)
    with pytest.raises(ValueError, match="outside"):
        plan_path(cells, (10, 0), (30, 5))


# -- fusion ------------------------------------------------------------------------------------------
def test_fusion_rule_obstacle_wins_then_free_then_unknown() -> None:
    a = np.array([[FREE, UNKNOWN, OCCUPIED, UNKNOWN]], np.int8)
    b = np.array([[OCCUPIED, FREE, FREE, UNKNOWN]], np.int8)
    assert fuse([a, b]).tolist() == [[OCCUPIED, FREE, OCCUPIED, UNKNOWN]]


def test_fused_grid_keeps_only_recent_cameras_and_the_newest_stamp() -> None:
    rows, cols, _ = grid_layout(0.5, 10.0, 4.0, -10.0)
    front = np.full((rows, cols), UNKNOWN, np.int8)
    front[:, cols // 2:] = FREE
    rear = np.full((rows, cols), UNKNOWN, np.int8)
    rear[:, : cols // 2] = OCCUPIED
    fused = FusedGrid(["front", "rear"], (rows, cols), max_age_s=0.5)
    one = fused.update("front", 10_000_000_000, front)
    assert one.cameras == ("front",) and np.array_equal(one.cells, front)
    both = fused.update("rear", 10_200_000_000, rear)
    assert both.cameras == ("front", "rear") and both.stamp_ns == 10_200_000_000
    assert (both.cells[:, : cols // 2] == OCCUPIED).all() and (both.cells[:, cols // 2:] == FREE).all()
    # The front camera's grid goes stale once the rear one is 0.5 s ahead of it.
    later = fused.update("rear", 10_600_000_000, rear)
    assert later.cameras == ("rear",) and later.stale == ("front",)
    assert (later.cells[:, cols // 2:] == UNKNOWN).all()
    # An older frame never replaces a newer one.
    fused.update("rear", 9_000_000_000, front)
    assert fused.update("rear", 10_600_000_000, rear).stamp_ns == 10_600_000_000
    with pytest.raises(ValueError, match="not the fused grid"):
        fused.update("front", 1, np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError, match="unknown camera"):
        fused.update("left", 1, front)


@pytest.mark.parametrize("seed", [0, 2])
def test_a_path_over_the_synthetic_street_stays_on_the_road(seed: int) -> None:
    """The consumer of road_grid in the demo: A* from the vehicle to the farthest free cell of its lane, on
    the grid of the synthetic street's exact road labels; then a car parked across the lane ahead."""
    from msseg_core import synthetic
    from msseg_core.ground.planner import plan_ahead

    frame = synthetic.SceneSequence(seed, 240, 180).frame(0)
    lookup = GroundGridLookup(frame.camera, resolution=0.25, length=30.0, width=16.0, max_range=30.0)
    cells = lookup.apply((frame.labels == synthetic.ROAD).astype(np.uint8) * 255)
    plan = plan_ahead(cells, lookup.resolution, lookup.origin[:2], clearance=0.75)
    assert plan.path.found, plan.describe()
    assert all(cells[r, c] == FREE for r, c in plan.path.cells)
    ys = lookup.origin[1] + (np.array([r for r, _ in plan.path.cells]) + 0.5) * lookup.resolution
    info = frame.info
    assert (ys >= info.road_right).all() and (ys <= info.road_left).all()  # on the true road
    assert plan.length_m > 5.0
    # A car across the whole road 8 m ahead: no path around it, and the planner says so.
    blocked = cells.copy()
    x8 = int((8.0 - lookup.origin[0]) / lookup.resolution)
    blocked[:, x8:x8 + 8] = OCCUPIED
    stopped = plan_ahead(blocked, lookup.resolution, lookup.origin[:2], clearance=0.75)
    assert not stopped.path.found and "blocked" in stopped.describe()
    # A car in the ego lane only: around it, never through it.
    lane = cells.copy()
    r_ego, _ = cell_of(0.0, 0.0, lookup.origin[:2], lookup.resolution)
    lane[r_ego - 3:r_ego + 4, x8:x8 + 8] = OCCUPIED
    around = plan_ahead(lane, lookup.resolution, lookup.origin[:2], clearance=0.75)
    if around.path.found:
        assert all(lane[r, c] == FREE for r, c in around.path.cells)
        assert not any(r_ego - 3 <= r <= r_ego + 3 and x8 <= c < x8 + 8 for r, c in around.path.cells)
    else:
        assert "blocked" in around.describe()
