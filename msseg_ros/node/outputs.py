"""What one segmented frame becomes on the wire, and which outputs a frame needs computed.

Per camera: the image outputs (`labels`, `color_mask`, `overlay`, `confidence`, `road_mask`) with the
input image's header; `road_grid` (nav_msgs/OccupancyGrid) in `grid_frame`; the ground points
(`obstacle_points`, `road_points`, organized `semantic/points`, all sensor_msgs/PointCloud2 in
`grid_frame`) and the pixel-aligned `semantic/labels` and `semantic/confidence` (mono8, the input's
header). Every output carries the input image's stamp. With several cameras the node also publishes
the vehicle's `road_grid`, fused from every camera's latest grid (fused_grid.py). An output nobody
subscribes to is never computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from msseg_ros.node.fused_grid import FusedGrid
from msseg_ros.node.road_grid import GridGeometry, RoadGrid
from msseg_ros.transport import topics
from msseg_ros.transport.image_codec import encode_image
from msseg_ros.transport.messages import occupancy_grid, point_cloud, stamp_ns

OUTPUT_ENCODINGS = topics.OUTPUT_ENCODINGS


@dataclass(frozen=True)
class FrameSettings:
    """The run-time parameters one frame is made with, taken together under the node's lock so that a
    parameter change never gives a frame half old and half new values."""

    overlay_alpha: float
    ground_lut: np.ndarray  # 256 bools: class id -> lies on the ground plane
    drivable_lut: np.ndarray  # 256 bools: class id -> a road class (drivable)
    points_step: int


@dataclass(frozen=True)
class Wanted:
    """What a camera's subscribers ask for right now, and what the Segmenter must compute for it."""

    images: list[str]  # image outputs with subscribers
    grid: bool  # the camera's road_grid
    vehicle_grid: bool  # the vehicle's fused road_grid (with cameras)
    points: list[str]  # point outputs with subscribers
    semantic: list[str]  # semantic/labels, semantic/confidence with subscribers
    compute: set[str]  # Segmenter outputs to compute

    @property
    def anything(self) -> bool:
        return bool(self.compute)


def wanted(camera: Any, vehicle: VehicleGrid | None) -> Wanted:
    """Look at the subscriber counts of a camera's publishers (and of the vehicle grid)."""
    images = [name for name, pub in camera.output_pubs.items() if pub.get_subscription_count() > 0]
    grid = camera.road_grid_pub.get_subscription_count() > 0
    vehicle_grid = vehicle is not None and vehicle.publisher.get_subscription_count() > 0
    points = [name for name, pub in camera.point_pubs.items() if pub.get_subscription_count() > 0]
    semantic = [name for name, pub in camera.semantic_pubs.items() if pub.get_subscription_count() > 0]
    compute = set(images)
    if grid or vehicle_grid or "road_mask" in compute:
        compute.add("road_mask")
        if camera.road_grid.params.road_min_confidence > 0:
            compute.add("confidence")  # the road threshold reads it; no second forward pass
    if points or semantic:
        compute.add("labels")
    if topics.SEMANTIC_CONFIDENCE in semantic:
        compute.add("confidence")
    return Wanted(images, grid, vehicle_grid, points, semantic, compute)


class VehicleGrid:
    """The vehicle's road grid: its geometry (the node's top-level grid_* parameters), the fusion of the
    cameras' latest grids, and its publisher."""

    def __init__(self, cameras: list[str], geometry: GridGeometry, frame_id: str, max_age_s: float, publisher: Any):
        from msseg_core.ground.projection import grid_layout

        rows, cols, origin = grid_layout(geometry.resolution, geometry.length, geometry.width, geometry.min_x)
        self.geometry, self.frame_id, self.origin, self.publisher = geometry, frame_id, origin, publisher
        self.fused = FusedGrid(cameras, (rows, cols), max_age_s)

    def add(self, camera: Any, refined_road_mask: np.ndarray, stamp: Any) -> tuple[bool, str]:
        """Fuse this camera's frame in and publish the vehicle grid: (published, problem or '')."""
        if camera.road_grid.sees_any_cell_of(self.geometry, refined_road_mask.shape[:2]) is False:
            return False, (f"camera {camera.name} sees no cell of the vehicle's road_grid (grid_* parameters): "
                           "check its mounting or the grid's extent")
        cells = camera.road_grid.cells_on(refined_road_mask, self.geometry)
        if cells is None:
            return False, f"no vehicle road_grid from camera {camera.name}: {camera.road_grid.camera_error}"
        fused = self.fused.update(camera.name, stamp_ns(stamp), cells)
        grid = RoadGrid(fused.cells, self.geometry.resolution, self.origin, self.frame_id)
        self.publisher.publish(occupancy_grid(grid, _time(fused.stamp_ns)))
        return True, ""


def _time(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def publish_frame_outputs(camera: Any, header: Any, result: dict[str, np.ndarray], want: Wanted,
                          settings: FrameSettings, vehicle: VehicleGrid | None) -> tuple[list[str], list[str]]:
    """Publish everything wanted for one frame; returns (names published, problems to count and report).
    `result["road_mask"]` is the refined mask (road_grid.refine)."""
    published, problems = [], []
    for name in want.images:
        camera.output_pubs[name].publish(encode_image(result[name], OUTPUT_ENCODINGS[name], header))
        published.append(name)
    if want.grid:
        grid = camera.road_grid.compute(result["road_mask"], refined=True)
        if grid is not None:
            camera.road_grid_pub.publish(occupancy_grid(grid, header.stamp))
            published.append(topics.ROAD_GRID)
        else:
            problems.append(f"no road_grid: {camera.road_grid.camera_error or 'no CameraInfo yet'}")
    if want.vehicle_grid:
        done, problem = vehicle.add(camera, result["road_mask"], header.stamp)
        if done:
            published.append("vehicle road_grid")
        elif problem:
            problems.append(problem)
    if want.points or want.semantic:
        published += _publish_points(camera, header, result, want, settings, problems)
    return published, problems


def _publish_points(camera: Any, header: Any, result: dict[str, np.ndarray], want: Wanted, settings: FrameSettings,
                    problems: list[str]) -> list[str]:
    found = camera.road_grid.points(result["labels"], settings.ground_lut, settings.drivable_lut,
                                    settings.points_step)
    if found is None:
        problems.append(f"no ground points: {camera.road_grid.camera_error or 'no CameraInfo yet'}")
        return []
    pts, frame_id = found
    clouds = {
        topics.OBSTACLE_POINTS: lambda: (pts.obstacles, pts.obstacle_classes),
        topics.ROAD_POINTS: lambda: (pts.ground[pts.drivable], pts.ground_classes[pts.drivable]),
        topics.SEMANTIC_POINTS: lambda: (pts.organized, pts.organized_classes),
    }
    for name in want.points:
        xyz, classes = clouds[name]()
        camera.point_pubs[name].publish(point_cloud(xyz, classes, frame_id, header.stamp))
    step = settings.points_step
    images = {topics.SEMANTIC_LABELS: lambda: pts.organized_classes,
              topics.SEMANTIC_CONFIDENCE: lambda: np.ascontiguousarray(result["confidence"][::step, ::step])}
    for name in want.semantic:
        camera.semantic_pubs[name].publish(encode_image(images[name](), "mono8", header))
    return [*want.points, *want.semantic]


__all__ = ["FrameSettings", "VehicleGrid", "Wanted", "publish_frame_outputs", "wanted"]
