"""One node, several cameras (`cameras`), over real DDS: each camera's topics under its name and its
outputs with its own header, one model whose forward pass takes the frames pending from several cameras
as one batch, round robin under overload with every frame of every camera accounted for, per-camera
road-grid parameters, per-camera diagnostics, and clear errors for bad camera lists."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers_ros import (
    FAST_PARAMS,
    InProcessNode,
    SegmentationClient,
    frame_counters,
    image_array,
    make_header,
    namespace,
    random_rgb,
    rgb_image,
)
from nav_msgs.msg import OccupancyGrid
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo

from msseg_core.ground.camera import PinholeCamera
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter
from msseg_ros.node.pipeline import all_accounted
from msseg_ros.node.segmentation_node import ConfigError

pytestmark = pytest.mark.ros
CAMERAS = ["front", "left", "right"]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> Segmenter:  # noqa: F811
    return Segmenter.from_checkpoint(tiny_checkpoint, **FAST_PARAMS)


class Cameras:
    """One SegmentationClient per camera of an in-process node."""

    def __init__(self, ns: str, outputs=("labels",)):
        self.clients = {c: SegmentationClient(f"{ns}/{c}", outputs=outputs, name=f"cam_{c}") for c in CAMERAS}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.fixture()
def three(tiny_checkpoint) -> Iterator[tuple[InProcessNode, Cameras]]:  # noqa: F811
    ns = namespace("cams")
    params = {"checkpoint": str(tiny_checkpoint), "cameras": CAMERAS, "front.camera_height": 1.2,
              "left.camera_yaw": 1.5, "grid_resolution": 0.5, "streams": 1}  # one worker: batches (streams: below)
    with InProcessNode(params, ns) as node:
        cams = Cameras(ns, outputs=OUTPUTS)
        try:
            for client in cams.clients.values():
                client.wait_until_served()
            yield node, cams
        finally:
            cams.close()


def counters(node: InProcessNode, camera: str) -> dict[str, int]:
    return frame_counters(next(c for c in node.node.cameras if c.name == camera))


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_each_camera_is_served_under_its_name_with_its_header(three, reference: Segmenter) -> None:
    node, cams = three
    fqn = node.fqn
    for i, (camera, client) in enumerate(cams.clients.items()):
        rgb = random_rgb(24 + 8 * i, 32 + 8 * i, seed=i)
        sent = rgb_image(rgb, make_header(f"{camera}_optical_frame"))
        outputs = client.request(sent)
        assert set(outputs) == set(OUTPUTS)
        for msg in outputs.values():
            assert msg.header == sent.header and (msg.height, msg.width) == rgb.shape[:2], camera
        assert (image_array(outputs["labels"]) == reference.predict(rgb)).mean() >= 0.99
    client = cams.clients["front"]
    for camera in CAMERAS:
        values = client.wait_for_status(fqn, lambda s: int(s["processed"]) >= 1, camera=camera)
        assert values["camera"] == camera and values["input topic"] == f"{fqn.rsplit('/', 1)[0]}/{camera}/image"
        assert client.status_message(fqn, camera).hardware_id == f"{fqn}:{camera}"
    assert all(all_accounted(counters(node, c)) for c in CAMERAS)


def test_frames_pending_together_go_through_the_network_as_one_batch(three) -> None:
    """The worker is held in the network on a front frame while a frame of every camera arrives; it then
    takes all three at once: one forward pass for three cameras, each answered on its own topics."""
    node, cams = three
    seg = node.node.segmenter
    entered, release, batches = threading.Event(), threading.Event(), []
    single, batch = seg.run_network, seg.run_network_batch

    def held(rgb):
        entered.set()
        assert release.wait(30)
        return single(rgb)

    def recorded(frames):
        batches.append(len(frames))
        return batch(frames)

    seg.run_network, seg.run_network_batch = held, recorded
    try:
        first = cams.clients["front"].publish(rgb_image(random_rgb(16, 24)))
        assert entered.wait(20)
        before = {c: counters(node, c)["received"] for c in CAMERAS}
        keys = {c: client.publish(rgb_image(random_rgb(20, 28, seed=9), make_header(c))) for c, client in
                cams.clients.items()}
        assert wait_until(lambda: all(counters(node, c)["received"] == before[c] + 1 for c in CAMERAS))
        release.set()
        cams.clients["front"].wait_for(first)
        for camera, key in keys.items():
            assert cams.clients[camera].wait_for(key)["labels"].header.frame_id == camera
    finally:
        release.set()
        seg.run_network, seg.run_network_batch = single, batch
    assert batches == [3], batches


def test_round_robin_under_overload(tiny_checkpoint) -> None:  # noqa: F811
    """max_batch 1 and three cameras flooding: every camera is served in turn, none starves, and each
    camera's frames are all accounted for (received = processed + dropped + invalid + errors + skipped)."""
    ns = namespace("cams_rr")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "cameras": CAMERAS, "max_batch": 1, "streams": 1},
                       ns) as node:
        cams = Cameras(ns)
        try:
            for client in cams.clients.values():
                client.wait_until_served()
            start = {c: counters(node, c) for c in CAMERAS}
            frames = [rgb_image(random_rgb(60, 80, seed=i)) for i in range(4)]

            def processed() -> dict[str, int]:
                return {c: counters(node, c)["processed"] - start[c]["processed"] for c in CAMERAS}

            # Flood every camera (a few ms between rounds leave the in-process node the CPU) until each camera
            # has 10 frames processed, or one has 40 (then another starves).
            deadline, i = time.monotonic() + 120, 0
            while min(processed().values()) < 10 and max(processed().values()) < 40:
                assert time.monotonic() < deadline, processed()
                for client in cams.clients.values():
                    client.publish(frames[i % len(frames)])
                i += 1
                time.sleep(0.005)
            assert wait_until(lambda: all(all_accounted(counters(node, c)) for c in CAMERAS))
        finally:
            cams.close()
        dropped = {c: counters(node, c)["dropped"] - start[c]["dropped"] for c in CAMERAS}
        done = processed()
    assert all(dropped.values()), dropped  # overloaded indeed
    print(f"\nframes processed per camera under overload, max_batch 1: {done}")
    assert min(done.values()) >= 10 and max(done.values()) - min(done.values()) <= 3, done  # strict turns


def test_streams_run_cameras_side_by_side(tiny_checkpoint, reference: Segmenter) -> None:  # noqa: F811
    """streams 2: two workers, each with its own Segmenter replica of the one model, run frames of
    different cameras at the same time and publish them; outputs are what one Segmenter gives, each
    camera's come out in the order its frames went in, and the diagnostics say how many streams run."""
    ns = namespace("cams_streams")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "cameras": CAMERAS, "streams": 2}, ns) as node:
        seg_node, publishers = node.node, []
        assert len(seg_node._segmenters) == 2 and seg_node._segmenters[1].net is not seg_node.segmenter.net
        publish = seg_node.publish_frame

        def spy(frame):
            publishers.append(threading.current_thread().name)
            publish(frame)

        seg_node.publish_frame = spy
        cams = Cameras(ns)
        try:
            for client in cams.clients.values():
                client.wait_until_served()
            for i, (camera, client) in enumerate(cams.clients.items()):
                rgb = random_rgb(24, 32, seed=20 + i)
                labels = image_array(client.request(rgb_image(rgb, make_header(camera)))["labels"])
                assert (labels == reference.predict(rgb)).mean() >= 0.99, camera
            # Every camera streaming at once: both workers publish, and no camera's outputs overtake each other.
            sent = {c: [] for c in CAMERAS}
            for k in range(15):
                for camera, client in cams.clients.items():
                    sent[camera].append(client.publish(rgb_image(random_rgb(40, 56, seed=k), make_header(camera))))
                time.sleep(0.01)
            for camera, client in cams.clients.items():
                client.wait_for(sent[camera][-1], timeout=60)
                got = [key for key in list(client.received) if key in sent[camera]]  # in order of arrival
                assert got == sorted(got, key=sent[camera].index), camera
            values = cams.clients["front"].wait_for_status(node.fqn, lambda s: "streams" in s, camera="front")
            assert values["streams"] == "2"
        finally:
            cams.close()
        assert wait_until(lambda: all(all_accounted(counters(node, c)) for c in CAMERAS))
    assert {"msseg_worker0", "msseg_worker1"} <= set(publishers), set(publishers)


def camera_info(header) -> CameraInfo:
    return CameraInfo(header=header, **PinholeCamera(64, 48, [40.0, 0, 32, 0, 40.0, 24, 0, 0, 1]).camera_info_fields())


def test_per_camera_road_grid_parameters(three) -> None:
    """`<camera>.<parameter>` mounts each camera; a top-level value is where every camera starts; at run
    time each camera changes alone and a top-level change is refused with the per-camera name to use."""
    node, cams = three
    grids = {c: node.node.cameras[i].road_grid for i, c in enumerate(CAMERAS)}
    assert grids["front"].params.camera_height == 1.2 and grids["left"].params.camera_height == 1.5
    assert grids["left"].params.camera_yaw == 1.5 and grids["right"].params.camera_yaw == 0.0
    assert {g.params.grid_resolution for g in grids.values()} == {0.5}
    client = cams.clients["left"]
    assert all(r.successful for r in client.set_parameters(node.fqn, {"left.camera_pitch": 0.25}))
    assert grids["left"].params.camera_pitch == 0.25 and grids["front"].params.camera_pitch == 0.0
    refused = client.set_parameters(node.fqn, {"camera_pitch": 0.1})[0]
    assert not refused.successful and "<camera>.camera_pitch" in refused.reason
    refused = client.set_parameters(node.fqn, {"left.camera_pitch": 3.0})[0]
    assert not refused.successful and refused.reason.startswith("camera left:"), refused.reason
    # The road grid of one camera: its CameraInfo, its frame's stamp.
    got = threading.Event()
    grids_rx: list[OccupancyGrid] = []
    client.node.create_subscription(OccupancyGrid, f"{client.namespace}/road_grid",
                                    lambda m: (grids_rx.append(m), got.set()),
                                    QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    info_pub = client.node.create_publisher(CameraInfo, f"{client.namespace}/camera_info", 10)
    assert wait_until(lambda: (info_pub.publish(camera_info(make_header("left_optical"))) or True)
                      and grids["left"].ready)
    assert not grids["front"].ready
    sent = rgb_image(random_rgb(48, 64), make_header("left_optical"))
    client.request(sent)
    assert got.wait(20) and grids_rx[0].header.stamp == sent.header.stamp
    assert grids_rx[0].header.frame_id == "base_footprint" and abs(grids_rx[0].info.resolution - 0.5) < 1e-6


@pytest.mark.parametrize(("params", "expected"), [
    ({"cameras": ["front", "front"]}, "parameter cameras: camera 'front' is listed twice"),
    ({"cameras": ["front", "left/2"]}, "parameter cameras: camera name 'left/2' must start with a letter"),
    ({"cameras": ["device"]}, "parameter cameras: camera name 'device' is the name of a node parameter"),
    ({"cameras": ["front", "lefft"], "front.camera_height": 1.0, "left.camera_height": 1.0},
     "camera 'lefft' has no parameters of its own, but 'left' has (and is not in cameras: front, lefft)"),
    ({"cameras": ["front"], "front.camera_heigth": 1.0}, "cameras have no parameter 'camera_heigth'"),
    ({"cameras": ["front"], "front.camera_pitch": 2.0}, "camera front: camera_pitch and camera_roll must be"),
])
def test_bad_camera_configurations_are_one_clear_error(tiny_checkpoint, params: dict, expected: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError) as info:
        InProcessNode({"checkpoint": str(tiny_checkpoint), **params}, namespace("cams_bad")).close()
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_params_file_may_mount_cameras_that_are_not_launched(tiny_checkpoint) -> None:  # noqa: F811
    """multi_camera.launch.py cameras:="[front,left]" with config/multi_camera.yaml, which mounts right too."""
    import yaml
    from helpers_ros import REPO

    file_params = yaml.safe_load((REPO / "config" / "multi_camera.yaml").read_text())["/**"]["ros__parameters"]
    mounted = {f"{cam}.{k}": v for cam in ("front", "left", "right") for k, v in file_params[cam].items()}
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "cameras": ["front", "left"], **mounted},
                       namespace("cams_subset")) as node:
        seg = node.node
        assert [c.name for c in seg.cameras] == ["front", "left"]
        left = seg.cameras[1].road_grid.params
        assert left.camera_yaw == pytest.approx(1.5708) and left.grid_min_x == -12.0
        assert not seg.has_parameter("right.camera_yaw")


def test_a_failed_configure_leaves_nothing_half_made(tiny_checkpoint) -> None:  # noqa: F811
    params = {"checkpoint": str(tiny_checkpoint), "cameras": CAMERAS, "right.camera_pitch": 2.0, "autostart": False}
    with InProcessNode(params, namespace("cams_half")) as node:
        seg = node.node
        assert seg.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "camera right" in seg.last_error
        assert seg.cameras == [] and seg.segmenter is None
        declared = seg.list_parameters([], 0).names
        assert not [n for n in declared if n.startswith(("front.", "left.", "right.")) or n == "road_classes"]
        names = {name for name, _ in seg.get_subscriber_names_and_types_by_node(seg.get_name(), seg.get_namespace())}
        assert not [n for n in names if n.endswith("/image")], names
