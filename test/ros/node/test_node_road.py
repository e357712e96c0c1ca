"""The node's road outputs for planners: the refined `road_mask` and the `road_grid` OccupancyGrid,
over real DDS with an in-process node. Geometry itself is tested in test_camera.py and test_geometry.py;
here: the wiring (stamps, frame, camera model from CameraInfo, run-time parameters, refused cameras)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers_ros import (
    DiagnosticsLog,
    InProcessNode,
    SegmentationClient,
    image_array,
    make_header,
    namespace,
    random_rgb,
    rgb_image,
)
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import Log
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo

from msseg_core.classes import CAMVID
from msseg_core.ground.camera import PinholeCamera
from msseg_core.ground.road_mask import ego_region, refine_road_mask
from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS, RoadGridBuilder

pytestmark = pytest.mark.ros
H, W = 48, 64
GRID_PARAMS = {"camera_height": 1.6, "camera_pitch": 0.2,
               "road_classes": list(CAMVID.names)}  # every pixel is road: the grid is free wherever it sees ground


def camera_info(header, distortion_model: str = "plumb_bob", d: list[float] | None = None) -> CameraInfo:
    k = [40.0, 0.0, W / 2, 0.0, 40.0, H / 2, 0.0, 0.0, 1.0]
    fields = PinholeCamera(W, H, k).camera_info_fields() | {"distortion_model": distortion_model, "d": d or [0.0] * 5}
    return CameraInfo(header=header, **fields)


class GridListener:
    """Collects road_grid messages by stamp on the client's node."""

    def __init__(self, client: SegmentationClient, topic: str):
        self.cond = threading.Condition()
        self.grids: dict[tuple[int, int], OccupancyGrid] = {}
        client.node.create_subscription(OccupancyGrid, topic, self._on_grid,
                                        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def _on_grid(self, msg: OccupancyGrid) -> None:
        with self.cond:
            self.grids[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            self.cond.notify_all()

    def wait(self, key, timeout: float = 20.0) -> OccupancyGrid:
        with self.cond:
            assert self.cond.wait_for(lambda: key in self.grids, timeout), "no road_grid for the frame"
            return self.grids[key]


def send_camera_info(publisher, node: InProcessNode, info: CameraInfo, taken, timeout: float = 10.0) -> None:
    """Publish `info` until the node has taken it (`taken(builder)`): it must reach the node before the
    frame that needs it."""
    deadline = time.monotonic() + timeout
    while not taken(node.node.road_grid):
        assert time.monotonic() < deadline, f"the node did not take the CameraInfo: {node.node.road_grid.camera_error}"
        publisher.publish(info)
        time.sleep(0.1)


def test_road_grid_follows_camera_info_and_road_mask(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("seg_grid")
    params = {"checkpoint": str(tiny_checkpoint), **GRID_PARAMS}
    with InProcessNode(params, ns) as node, SegmentationClient(ns, outputs=("labels", "road_mask")) as c:
        grids = GridListener(c, f"{ns}/road_grid")
        info_pub = c.node.create_publisher(CameraInfo, f"{ns}/camera_info", 10)
        c.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        send_camera_info(info_pub, node, camera_info(make_header("camera_optical_frame")), lambda b: b.ready)
        frame = rgb_image(random_rgb(H, W, seed=3), make_header("camera_optical_frame"))
        key = c.publish(frame)
        outputs = c.wait_for(key)
        grid = grids.wait((frame.header.stamp.sec, frame.header.stamp.nanosec))

        assert grid.header.stamp == frame.header.stamp
        assert grid.header.frame_id == ROAD_GRID_DEFAULTS["grid_frame"] == "base_footprint"  # REP-105
        res = ROAD_GRID_DEFAULTS["grid_resolution"]
        assert abs(grid.info.resolution - res) < 1e-6
        assert grid.info.width * grid.info.height == len(grid.data)
        assert round(grid.info.height * res) == round(ROAD_GRID_DEFAULTS["grid_length"]) or \
            round(grid.info.width * res) == round(ROAD_GRID_DEFAULTS["grid_length"])
        cells = np.asarray(grid.data, dtype=np.int8)
        road_mask = image_array(outputs["road_mask"])
        assert (road_mask == 255).all()
        assert set(np.unique(cells)) <= {-1, 0} and (cells == 0).sum() > 0.05 * cells.size
        # The node's grid equals an offline builder fed the same CameraInfo, parameters and mask.
        builder = RoadGridBuilder(**{**ROAD_GRID_DEFAULTS, "camera_height": 1.6, "camera_pitch": 0.2})
        builder.update_camera_info(camera_info(frame.header))
        offline = builder.compute(road_mask, refined=True)
        np.testing.assert_array_equal(offline.cells.reshape(-1), cells)


def test_unknown_distortion_model_is_a_warning_and_no_grid(tiny_checkpoint) -> None:  # noqa: F811
    """A CameraInfo whose distortion model the camera model does not know: no road_grid at all (not a
    silently wrong one), a WARN on /rosout naming the model, the frames counted in no_road_grid and
    reported by /diagnostics; the other outputs go on. A usable CameraInfo brings the grid back."""
    ns = namespace("seg_grid_unknown")
    params = {"checkpoint": str(tiny_checkpoint), **GRID_PARAMS}
    with InProcessNode(params, ns) as node, SegmentationClient(ns, outputs=("labels", "road_mask")) as c:
        grids = GridListener(c, f"{ns}/road_grid")
        diagnostics = DiagnosticsLog(c, node.fqn)
        warnings: list[str] = []
        c.node.create_subscription(  # /rosout keeps its history for late subscribers (transient local)
            Log, "/rosout", lambda m: warnings.append(m.msg) if m.level == Log.WARN else None,
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        info_pub = c.node.create_publisher(CameraInfo, f"{ns}/camera_info", 10)
        c.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        unknown = camera_info(make_header("camera_optical_frame"), "kannala_brandt", [0.1, 0.01, 0.0, 0.0])
        send_camera_info(info_pub, node, unknown, lambda b: "kannala_brandt" in (b.camera_error or ""))
        refused = c.publish(rgb_image(random_rgb(H, W, seed=4), make_header("camera_optical_frame")))
        c.wait_for(refused)  # the frame was segmented and its outputs published
        status = diagnostics.wait_for(lambda s: "'kannala_brandt' is not supported" in s.message)
        assert status.level == status.WARN and int({kv.key: kv.value for kv in status.values}["no_road_grid"]) >= 1

        send_camera_info(info_pub, node, camera_info(make_header("camera_optical_frame")), lambda b: b.ready)
        accepted = c.publish(rgb_image(random_rgb(H, W, seed=5), make_header("camera_optical_frame")))
        grids.wait(accepted)
        # One publisher, reliable, in order: had the refused frame had a grid, it would have come first.
        assert refused not in grids.grids
        deadline = time.monotonic() + 10
        while not any("kannala_brandt" in w for w in warnings) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("no road_grid" in w and "'kannala_brandt' is not supported" in w for w in warnings), warnings


def test_road_mask_refinement_parameters_at_run_time(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("seg_roadmask")
    road_ids = [CAMVID.names.index(n) for n in ("Road", "Sky", "Building", "Tree")]
    params = {"checkpoint": str(tiny_checkpoint), "road_classes": ["Road", "Sky", "Building", "Tree"]}
    with InProcessNode(params, ns) as node, SegmentationClient(ns, outputs=("labels", "road_mask")) as c:
        c.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        rgb = random_rgb(H, W, seed=7)

        def masks() -> tuple[np.ndarray, np.ndarray]:
            out = c.request(rgb_image(rgb))
            labels = image_array(out["labels"])
            raw = np.where(np.isin(labels, road_ids), 255, 0).astype(np.uint8)
            return raw, image_array(out["road_mask"])

        raw, published = masks()  # default: cleaned with the default kernel
        np.testing.assert_array_equal(
            published, refine_road_mask(raw, kernel_size=ROAD_GRID_DEFAULTS["road_cleanup_kernel"]))

        assert all(r.successful for r in c.set_parameters(node.fqn, {"road_cleanup_kernel": 0}))
        raw, published = masks()
        np.testing.assert_array_equal(published, raw)  # no clean-up: exactly the union of road classes

        assert all(r.successful for r in c.set_parameters(node.fqn, {"road_ego_only": True}))
        raw, published = masks()
        np.testing.assert_array_equal(published, ego_region(raw))

        for bad in ({"grid_resolution": -1.0}, {"road_min_confidence": 1.5}, {"road_cleanup_kernel": -3}):
            result = c.set_parameters(node.fqn, bad)[0]
            assert not result.successful and result.reason, bad
        assert node.node.road_grid.params.road_ego_only and node.node.road_grid.params.road_cleanup_kernel == 0
        assert all(r.successful for r in c.set_parameters(node.fqn, {"camera_rectified": True}))
        assert node.node.road_grid.params.camera_rectified
