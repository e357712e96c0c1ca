"""Road outputs a planner takes as they are, over real DDS with an in-process node: the road grid with
the QoS of Nav2's map consumers (and a late subscriber served at once), ground points for costmap
layers, one fused grid for a vehicle with several cameras, a lifecycle manager without bond, and a
slow frame in flight while the node is taken down."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from helpers_ros import InProcessNode, SegmentationClient, image_array, make_header, namespace, random_rgb, rgb_image
from nav_msgs.msg import OccupancyGrid
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from msseg_core.classes import CAMVID
from msseg_core.ground.camera import CameraPose, PinholeCamera
from msseg_core.ground.points import class_lut
from msseg_core.ground.projection import FREE, OCCUPIED, UNKNOWN
from msseg_ros.node.fused_grid import fuse
from msseg_ros.node.road_grid import RoadGridBuilder
from msseg_ros.transport.messages import cloud_points

pytestmark = pytest.mark.ros
H, W = 48, 64
MOUNT = {"camera_height": 1.6, "camera_pitch": 0.2}

# Nav2's subscriptions to map-like topics (nav2_costmap_2d static_layer.cpp, costmap_filters):
NAV2_QOS = {
    "StaticLayer (map_subscribe_transient_local: true)": QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL),
    "StaticLayer (map_subscribe_transient_local: false)": QoSProfile(  # rclcpp::SystemDefaultsQoS
        history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE),
    "KeepoutFilter / SpeedFilter mask": QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL),
    "plain volatile best effort": qos_profile_sensor_data,
}


def camera_info(header) -> CameraInfo:
    k = [40.0, 0.0, W / 2, 0.0, 40.0, H / 2, 0.0, 0.0, 1.0]
    return CameraInfo(header=header, **PinholeCamera(W, H, k).camera_info_fields())


class Inbox:
    """Messages of one topic, by stamp, on a client's node."""

    def __init__(self, client: SegmentationClient, msg_type: Any, topic: str, qos: QoSProfile | None = None):
        self.cond = threading.Condition()
        self.by_stamp: dict[tuple[int, int], Any] = {}
        self.sub = client.node.create_subscription(msg_type, topic, self._on, qos or QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def _on(self, msg: Any) -> None:
        with self.cond:
            self.by_stamp[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            self.cond.notify_all()

    def wait(self, key: tuple[int, int] | None = None, timeout: float = 20.0) -> Any:
        with self.cond:
            ok = self.cond.wait_for(lambda: (key in self.by_stamp) if key else bool(self.by_stamp), timeout)
            assert ok, f"nothing on {self.sub.topic_name} for {key}"
            return self.by_stamp[key] if key else next(iter(self.by_stamp.values()))


def give_camera_info(client: SegmentationClient, node: InProcessNode, topic: str, camera_index: int = 0) -> None:
    pub = client.node.create_publisher(CameraInfo, topic, 10)
    deadline = time.monotonic() + 15
    while not node.node.cameras[camera_index].road_grid.ready:
        assert time.monotonic() < deadline, "the node did not take the CameraInfo"
        pub.publish(camera_info(make_header("camera_optical_frame")))
        time.sleep(0.1)


def stamp_of(msg: Any) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def test_road_grid_reaches_every_nav2_subscriber_and_late_joiners_get_it_at_once(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("plan_qos")
    params = {"checkpoint": str(tiny_checkpoint), **MOUNT, "road_classes": list(CAMVID.names)}
    with InProcessNode(params, ns) as node, SegmentationClient(ns, outputs=("labels",)) as c:
        inboxes = {name: Inbox(c, OccupancyGrid, f"{ns}/road_grid", qos) for name, qos in NAV2_QOS.items()}
        c.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        give_camera_info(c, node, f"{ns}/camera_info")
        frame = rgb_image(random_rgb(H, W, seed=5), make_header("camera_optical_frame"))
        c.publish(frame)
        for name, inbox in inboxes.items():
            grid = inbox.wait(stamp_of(frame))
            assert grid.header.frame_id == "base_footprint", name
        # A consumer that starts later (a planner brought up after perception) gets the latest grid at once,
        # without another frame: transient local, depth 1.
        late = Inbox(c, OccupancyGrid, f"{ns}/road_grid", NAV2_QOS["KeepoutFilter / SpeedFilter mask"])
        assert stamp_of(late.wait(timeout=10.0)) == stamp_of(frame)
        info = c.node.get_publishers_info_by_topic(f"{ns}/road_grid")
        assert [i.qos_profile.durability for i in info] == [DurabilityPolicy.TRANSIENT_LOCAL]


def test_ground_points_are_stamped_framed_and_match_the_labels(tiny_checkpoint) -> None:  # noqa: F811
    """obstacle_points / road_points / organized semantic/points with semantic/labels and
    semantic/confidence at the same pixels: the image's stamp, clouds in grid_frame, images in the
    camera's frame, and exactly what the ground-point rule gives for the node's own labels."""
    ns = namespace("plan_points")
    ground, road = ["Road", "Pavement", "Sky", "Building"], ["Road", "Sky"]  # the tiny model's labels vary
    params = {"checkpoint": str(tiny_checkpoint), **MOUNT, "road_classes": road, "ground_classes": ground,
              "points_step": 2, "grid_max_range": 60.0}
    with InProcessNode(params, ns) as node, SegmentationClient(ns, outputs=("labels", "confidence")) as c:
        clouds = {name: Inbox(c, PointCloud2, f"{ns}/{name}") for name in
                  ("obstacle_points", "road_points", "semantic/points")}
        images = {name: Inbox(c, Image, f"{ns}/{name}") for name in ("semantic/labels", "semantic/confidence")}
        c.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        give_camera_info(c, node, f"{ns}/camera_info")
        header = make_header("camera_optical_frame")
        key = c.publish(rgb_image(random_rgb(H, W, seed=9), header))
        outputs = c.wait_for(key)
        stamp = (header.stamp.sec, header.stamp.nanosec)
        got = {name: inbox.wait(stamp) for name, inbox in clouds.items()}
        sem = {name: inbox.wait(stamp) for name, inbox in images.items()}
    labels = image_array(outputs["labels"])
    builder = RoadGridBuilder(**MOUNT, grid_max_range=60.0)
    builder.update_camera_info(camera_info(header))
    names = list(CAMVID.names)
    ids = lambda classes: [names.index(n) for n in classes]  # noqa: E731
    expected, frame_id = builder.points(labels, class_lut(ids(ground)), class_lut(ids(road)), 2)
    for msg in got.values():
        assert msg.header.frame_id == frame_id == "base_footprint"
    xyz, classes = cloud_points(got["obstacle_points"])
    np.testing.assert_array_equal(xyz[0], expected.obstacles)
    np.testing.assert_array_equal(classes[0], expected.obstacle_classes)
    xyz, classes = cloud_points(got["road_points"])
    np.testing.assert_array_equal(xyz[0], expected.ground[expected.drivable])
    assert set(np.unique(classes)) <= set(ids(road))
    organized, classes = cloud_points(got["semantic/points"])
    assert organized.shape == (*expected.organized_classes.shape, 3) == (H // 2, W // 2, 3)
    np.testing.assert_array_equal(organized, expected.organized)
    assert not got["semantic/points"].is_dense and np.isnan(organized).any() and (organized[..., 2][
        np.isfinite(organized[..., 2])] == 0).all()
    np.testing.assert_array_equal(image_array(sem["semantic/labels"]), labels[::2, ::2])
    np.testing.assert_array_equal(image_array(sem["semantic/confidence"]), image_array(outputs["confidence"])[::2, ::2])
    assert all(m.header.frame_id == "camera_optical_frame" for m in sem.values())
    # Each finite point of the organized cloud reprojects to its pixel through the camera model.
    cam = PinholeCamera.from_camera_info(camera_info(header)).with_pose(CameraPose(height=1.6, pitch=0.2))
    rows, cols = np.nonzero(np.isfinite(organized[..., 0]))
    u, v, _ = cam.project(organized[rows, cols].astype(np.float64))
    np.testing.assert_allclose(u, cols * 2, atol=1e-2)
    np.testing.assert_allclose(v, rows * 2, atol=1e-2)


def test_two_cameras_looking_apart_make_one_vehicle_grid(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("plan_fused")
    everything = list(CAMVID.names)
    params = {"checkpoint": str(tiny_checkpoint), "cameras": ["front", "rear"], "road_classes": everything,
              "grid_min_x": -12.0, "grid_length": 12.0, "grid_width": 12.0, "grid_resolution": 0.5,
              "grid_max_range": 40.0, "front.camera_x": 1.0, "rear.camera_x": -1.0, "rear.camera_yaw": float(np.pi),
              "fused_grid_max_age": 0.5,
              **{f"{c}.{k}": v for c in ("front", "rear") for k, v in MOUNT.items()}}
    with InProcessNode(params, ns) as node, \
            SegmentationClient(f"{ns}/front", outputs=("labels",), name="front_cam") as front, \
            SegmentationClient(f"{ns}/rear", outputs=("labels",), name="rear_cam") as rear:
        vehicle = Inbox(front, OccupancyGrid, f"{ns}/road_grid")
        for i, client in enumerate((front, rear)):
            client.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
            give_camera_info(client, node, f"{client.namespace}/camera_info", i)
        h1 = make_header("camera_optical_frame")
        front.publish(rgb_image(random_rgb(H, W, seed=1), h1))
        vehicle.wait((h1.stamp.sec, h1.stamp.nanosec))
        h2 = make_header("camera_optical_frame")
        h2.stamp.sec, h2.stamp.nanosec = h1.stamp.sec, h1.stamp.nanosec + 100_000_000  # 0.1 s later
        if h2.stamp.nanosec >= 1_000_000_000:
            h2.stamp.sec, h2.stamp.nanosec = h2.stamp.sec + 1, h2.stamp.nanosec - 1_000_000_000
        rear.publish(rgb_image(random_rgb(H, W, seed=2), h2))
        fused = vehicle.wait((h2.stamp.sec, h2.stamp.nanosec))
    cells = np.asarray(fused.data, np.int8).reshape(fused.info.height, fused.info.width)
    assert fused.header.frame_id == "base_footprint" and fused.info.origin.position.x == pytest.approx(-12.0)
    xs = fused.info.origin.position.x + (np.arange(fused.info.width) + 0.5) * fused.info.resolution
    # Every class is road: the front camera frees cells ahead, the rear camera cells behind.
    assert (cells[:, xs > 3] == FREE).any() and (cells[:, xs < -3] == FREE).any()
    # Exactly the fusion of the two cameras' grids on the vehicle geometry.
    per_camera = []
    for camera in node.node.cameras:
        assert camera.road_grid.ready
        per_camera.append(camera.road_grid.cells_on(np.full((H, W), 255, np.uint8), node.node.vehicle.geometry))
    np.testing.assert_array_equal(cells, fuse(per_camera))
    assert set(np.unique(cells)) <= {FREE, OCCUPIED, UNKNOWN}


def test_a_lifecycle_manager_without_bond_drives_the_node(tiny_checkpoint) -> None:  # noqa: F811
    """What Nav2's lifecycle_manager does with `bond_timeout: 0.0` (no bond): configure and activate through
    ~/change_state, frames flow, then deactivate, cleanup and shutdown, each answered success."""
    ns = namespace("plan_manager")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "autostart": False}, ns) as node, \
            SegmentationClient(ns, outputs=("labels",)) as manager:
        fqn = node.fqn
        assert manager.lifecycle_state(fqn) == "unconfigured"
        for transition, state in (("configure", "inactive"), ("activate", "active")):
            assert manager.change_state(fqn, transition), transition
            assert manager.lifecycle_state(fqn) == state
        manager.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        for transition, state in (("deactivate", "inactive"), ("cleanup", "unconfigured"),
                                  ("shutdown", "finalized")):
            assert manager.change_state(fqn, transition), transition
            assert manager.lifecycle_state(fqn) == state


def test_a_slow_frame_in_flight_while_the_node_is_taken_down(tiny_checkpoint) -> None:  # noqa: F811
    """Deactivate and cleanup while a frame is still being post-processed: the join that times out is
    logged, the late frame is dropped (counted), nothing is published after deactivation, and the node
    never touches the publishers it released."""
    ns = namespace("plan_slow")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node, \
            SegmentationClient(ns, outputs=("labels",)) as c:
        c.wait_until_served(lambda: rgb_image(random_rgb(H, W)))
        seg = node.node
        seg.join_timeout = 0.3
        inside, release = threading.Event(), threading.Event()
        postprocess = seg._segmenters[0].postprocess

        def slow(*args: Any, **kwargs: Any) -> Any:
            inside.set()
            release.wait(10)
            return postprocess(*args, **kwargs)

        seg._segmenters[0].postprocess = slow
        warnings: list[str] = []
        log = seg.get_logger()
        original_warning = log.warning
        log.warning = lambda msg, **kw: (warnings.append(msg), original_warning(msg, **kw))[1]  # type: ignore[method-assign]
        try:
            before = len(c.received)
            camera = seg.cameras[0]
            c.publish(rgb_image(random_rgb(H, W, seed=4)))
            assert inside.wait(20), "the frame never reached postprocess"
            assert seg.trigger_deactivate() is not None
            assert any("still busy with a frame" in w for w in warnings), warnings
            releaser = threading.Timer(0.5, release.set)
            releaser.start()
            seg.trigger_cleanup()  # waits at the gate only if the frame were publishing; it is not
            releaser.join()
            deadline = time.monotonic() + 10  # the slow frame finishes now: it must not publish or fail
            while camera.stats.snapshot()["dropped"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            counts = camera.stats.snapshot()
            assert len(c.received) == before, "a frame was published after deactivation"
            assert counts["errors"] == 0 and counts["dropped"] >= 1, counts
            assert counts["received"] == counts["processed"] + counts["dropped"] + counts["skipped"], counts
        finally:
            release.set()
            log.warning = original_warning  # type: ignore[method-assign]



def test_point_clouds_round_trip_with_class_ids_and_nan() -> None:
    from msseg_ros.transport.messages import point_cloud

    organized = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    organized[0, 1] = np.nan
    classes = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    header = make_header("base_footprint")
    msg = point_cloud(organized, classes, "base_footprint", header.stamp)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (2, 3, 16, 48) and not msg.is_dense
    assert [(f.name, f.offset) for f in msg.fields] == [("x", 0), ("y", 4), ("z", 8), ("class_id", 12)]
    xyz, got = cloud_points(msg)
    np.testing.assert_array_equal(xyz, organized)
    np.testing.assert_array_equal(got, classes)
    flat = point_cloud(organized.reshape(-1, 3)[[0, 2]], classes.reshape(-1)[[0, 2]], "odom", header.stamp)
    assert (flat.height, flat.width) == (1, 2) and flat.is_dense and flat.header.frame_id == "odom"


def test_label_info_where_vision_msgs_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """vision_msgs comes with an apt ROS 2, not with the PyPI wheels: without it the node publishes no
    label_info (and works, as every other test here shows); with it, LabelInfo maps id i to class i."""
    import sys
    import types

    from msseg_ros.transport import messages

    if "vision_msgs" not in sys.modules:
        assert not messages.label_info_available()

    class VisionClass:
        def __init__(self, class_id: int, class_name: str):
            self.class_id, self.class_name = class_id, class_name

    class LabelInfo:
        def __init__(self):
            self.header = make_header("")
            self.class_map: list = []
            self.threshold = -1.0

    fake = types.ModuleType("vision_msgs.msg")
    fake.LabelInfo, fake.VisionClass = LabelInfo, VisionClass
    monkeypatch.setitem(sys.modules, "vision_msgs", types.ModuleType("vision_msgs"))
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", fake)
    assert messages.label_info_available()
    msg = messages.label_info(list(CAMVID.names), make_header("").stamp)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == list(enumerate(CAMVID.names))
    assert msg.threshold == 0.0


def test_a_camera_that_sees_none_of_the_vehicle_grid_is_reported_not_fused() -> None:
    """A rear camera mounted as if looking forward-down onto a grid that lies only behind the vehicle: no
    cell of its view is in the grid, so it is a diagnostics problem naming it, and nothing is published."""
    from types import SimpleNamespace

    from msseg_ros.node.outputs import VehicleGrid
    from msseg_ros.node.road_grid import GridGeometry

    published: list[Any] = []
    camera = SimpleNamespace(name="rear", road_grid=RoadGridBuilder(**MOUNT))
    camera.road_grid.update_camera_info(camera_info(make_header("rear_optical")))
    behind = GridGeometry(resolution=0.5, min_x=-20.0, length=-5.0, width=10.0)
    vehicle = VehicleGrid(["rear"], behind, "base_footprint", 0.5, SimpleNamespace(publish=published.append))
    done, problem = vehicle.add(camera, np.full((H, W), 255, np.uint8), make_header("rear_optical").stamp)
    assert not done and not published and "camera rear sees no cell of the vehicle's road_grid" in problem
    ahead = VehicleGrid(["rear"], GridGeometry(0.5, 0.0, 20.0, 10.0), "base_footprint", 0.5,
                        SimpleNamespace(publish=published.append))
    assert ahead.add(camera, np.full((H, W), 255, np.uint8), make_header("rear_optical").stamp) == (True, "")
    assert len(published) == 1 and published[0].header.frame_id == "base_footprint"
