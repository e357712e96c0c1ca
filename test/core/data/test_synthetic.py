"""The built-in camera: renderer (determinism, labels, geometry), the input sources (synthetic, image
folder, video, rosbag2) and the `synthetic_camera` node over real DDS."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from msseg_core import synthetic
from msseg_core.ground.camera import PinholeCamera
from msseg_core.ground.projection import FREE, OCCUPIED, GroundGridLookup
from msseg_core.synthetic import (
    PAVEMENT,
    ROAD,
    SceneSequence,
    render_scene,
    scene_info,
)


def intrinsics(width: int, height: int, hfov_deg: float = 60.0) -> np.ndarray:
    return PinholeCamera.from_hfov(width, height, hfov_deg).intrinsics


# -- renderer ------------------------------------------------------------------------------------
def test_same_seed_same_pixels_and_other_seeds_differ():
    rgb1, lab1 = render_scene(5, 160, 120)
    rgb2, lab2 = render_scene(5, 160, 120)
    assert rgb1.shape == (120, 160, 3) and rgb1.dtype == np.uint8
    assert lab1.shape == (120, 160) and lab1.dtype == np.uint8
    np.testing.assert_array_equal(rgb1, rgb2)
    np.testing.assert_array_equal(lab1, lab2)
    rgb3, lab3 = render_scene(6, 160, 120)
    assert np.abs(rgb1.astype(int) - rgb3).mean() > 5
    assert (lab1 != lab3).mean() > 0.05


def test_labels_are_valid_ids_and_every_class_appears():
    seen = set()
    for seed in range(5):
        rgb, labels = render_scene(seed, 160, 120)
        values = set(np.unique(labels).tolist())
        assert values <= set(range(11)), f"seed {seed}: ids outside CamVid's 0..10 (no void expected): {values}"
        seen |= values
        # a plausible driving scene: sky at the top, road at the bottom centre, not a flat image
        assert labels[0, 80] in (synthetic.SKY, synthetic.BUILDING, synthetic.TREE, synthetic.POLE)
        assert labels[-1, 80] == ROAD
        assert rgb.std() > 20
    from msseg_core.classes import CAMVID

    missing = [CAMVID.names[i] for i in range(11) if i not in seen]
    assert not missing, f"classes never rendered in seeds 0..4: {missing}"


def test_sequence_moves_forward_deterministically():
    seq = SceneSequence(2, 160, 120, fps=10, speed=10.0)
    f0, f5 = seq.frame(0), seq.frame(5)
    assert f5.time == pytest.approx(0.5)
    assert (f0.labels != f5.labels).mean() > 0.02  # the world moved
    again = SceneSequence(2, 160, 120, fps=10, speed=10.0).frame(5)
    np.testing.assert_array_equal(again.rgb, f5.rgb)
    np.testing.assert_array_equal(again.labels, f5.labels)
    np.testing.assert_array_equal(seq.camera.intrinsics, intrinsics(160, 120, 60.0))
    assert seq.camera.pose == seq.info.camera_pose() == f5.camera.pose


def _expected_road_columns(row: int, cam: PinholeCamera, left: float, right: float) -> tuple[float, float, float]:
    """Independent pinhole maths: the ground distance seen at `row` and the columns of the road edges."""
    k = cam.intrinsics
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    c, s, h = math.cos(cam.pose.pitch), math.sin(cam.pose.pitch), cam.pose.height
    a = (row - cy) / f
    x = h * (c - a * s) / (a * c + s)  # base-frame forward distance of the ground at this row
    depth = c * x + s * h  # optical z
    return x, cx - f * left / depth, cx - f * right / depth


def test_road_edges_follow_the_ground_plane_projection():
    """Each image row sees the ground at one distance; the road's edges sit where the flat-ground
    projection of a road of the scene's width puts them, and the road widens towards the camera."""
    width, height = 320, 320
    cam = SceneSequence(0, width, height, hfov_deg=100.0).camera  # wide: the road edges are in view in many rows
    k = cam.intrinsics
    assert cam.horizon_row() == pytest.approx(k[1, 2] - k[1, 1] * math.tan(math.radians(3.0)))
    checked = 0
    for seed in range(12):
        info = scene_info(seed)
        if info.parking_width > 0:  # parked cars hide the kerb: use the scenes without parking
            continue
        labels = SceneSequence(seed, width, height, hfov_deg=100.0).frame(0).labels
        edges: dict[str, list[tuple[int, int]]] = {"left": [], "right": []}
        for row in range(int(cam.horizon_row()) + 6, height):
            x, u_left, u_right = _expected_road_columns(row, cam, info.road_left, info.road_right)
            assert cam.project([[x, 0.0, 0.0]])[1][0] == pytest.approx(row, abs=1e-6)  # the ground at x is on this row
            line = labels[row]
            for side, u, outward in (("left", u_left, -1), ("right", u_right, 1)):
                col = math.ceil(u) if side == "left" else math.floor(u)  # the outermost road pixel centre
                if not 3 <= col <= width - 4:
                    continue  # this edge is outside the image
                near = line[col - 3:col + 4]
                if line[col + 3 * outward] != PAVEMENT or line[col - 3 * outward] != ROAD or \
                        not np.isin(near, (ROAD, PAVEMENT)).all():
                    continue  # something stands on the edge in this row
                # the measured edge: the last road pixel before the pavement, walking outwards
                k = col - 3 * outward
                while line[k + outward] == ROAD:
                    k += outward
                assert abs(k - col) <= 1, (seed, row, side, k, u)
                edges[side].append((row, k))
                checked += 1
        lefts = [c for _, c in edges["left"]]
        rights = [c for _, c in edges["right"]]
        assert lefts == sorted(lefts, reverse=True), f"seed {seed}: left edge does not widen downwards"
        assert rights == sorted(rights), f"seed {seed}: right edge does not widen downwards"
    assert checked >= 60, f"only {checked} unobstructed edge pixels found"


def test_camera_is_the_renderers():
    """A sequence's camera is the scene's mounting (1.5 m, 3 degrees down), and the rays the renderer
    casts through its pixels are the ones the road grid projects along."""
    seq = SceneSequence(0, 320, 240)
    pose = scene_info(0).camera_pose()
    assert seq.camera.pose == pose and (pose.height, pose.pitch) == (1.5, pytest.approx(math.radians(3.0)))
    pts = np.array([[5.0, 1.0, 0.0], [20.0, -3.5, 0.0], [12.0, 2.0, 4.0]])
    u, v, _ = seq.camera.project(pts)
    rays = seq.camera.rays(u, v)
    np.testing.assert_allclose(np.cross(rays, pts - pose.translation), 0.0, atol=1e-9)


def test_ground_truth_road_maps_onto_the_known_road_strip():
    """The exact road labels, put on the ground with msseg_core.ground.projection's lookup, are the road strip
    of the scene: every cell outside it is not road; inside, road except where cars stand."""
    for seed in range(3):
        info, seq = scene_info(seed), SceneSequence(seed, 320, 240)
        lookup = GroundGridLookup(seq.camera, resolution=0.2, length=30.0, width=24.0, max_range=30.0, min_x=3.0)
        grid = lookup.apply(seq.frame(0).labels == ROAD)
        y = lookup.cell_y
        inside = lookup.valid & (y < info.road_left - 0.3) & (y > info.road_right + 0.3)
        outside = lookup.valid & ((y > info.road_left + 0.3) | (y < info.road_right - 0.3))
        assert inside.sum() > 1000 and outside.sum() > 1000
        assert (grid[outside] == OCCUPIED).all(), f"seed {seed}: road labels outside the road strip"
        assert (grid[inside] == FREE).mean() > 0.75, f"seed {seed}: road strip not labelled road"


# -- input sources -------------------------------------------------------------------------------
@pytest.mark.ros
def test_synthetic_source_matches_renderer():
    from msseg_ros.tools.sources import open_source

    with open_source("synthetic:3", width=160, height=120) as src:
        assert src.has_labels and src.camera == SceneSequence(3, 160, 120).camera
        frames = [f for _, f in zip(range(2), src, strict=False)]
    ref = SceneSequence(3, 160, 120)
    np.testing.assert_array_equal(frames[1].rgb, ref.frame(1).rgb)
    np.testing.assert_array_equal(frames[1].labels, ref.frame(1).labels)


def _write_folder(root: Path, n: int = 3, labels: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    (root / "test").mkdir(parents=True)
    if labels:
        (root / "testannot").mkdir()
    out = []
    for i in range(n):
        rgb, lab = render_scene(10 + i, 64, 48)
        cv2.imwrite(str(root / "test" / f"f{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if labels:
            disk = lab.copy()
            disk[:2] = 11  # CamVid's void on disk
            cv2.imwrite(str(root / "testannot" / f"f{i:03d}.png"), disk)
            lab = disk.copy()
            lab[:2] = 255
        out.append((rgb, lab))
    return out


@pytest.mark.ros
def test_folder_source_with_camvid_labels(tmp_path):
    from msseg_ros.tools.sources import open_source

    written = _write_folder(tmp_path)
    with open_source(str(tmp_path / "test")) as src:
        assert src.kind == "folder" and src.has_labels
        frames = list(src)
    assert [f.name for f in frames] == ["f000.png", "f001.png", "f002.png"]
    for f, (rgb, lab) in zip(frames, written, strict=True):
        np.testing.assert_array_equal(f.rgb, rgb)  # PNG is lossless
        np.testing.assert_array_equal(f.labels, lab)
    with open_source(str(tmp_path / "test"), width=32, height=24) as src:  # resized, labels nearest
        f = next(iter(src))
    assert f.rgb.shape == (24, 32, 3) and f.labels.shape == (24, 32)
    assert set(np.unique(f.labels)) <= set(range(11)) | {255}


@pytest.mark.ros
def test_folder_without_labels_and_single_image(tmp_path):
    from msseg_ros.tools.sources import open_source

    written = _write_folder(tmp_path, n=2, labels=False)
    with open_source(str(tmp_path / "test")) as src:
        assert not src.has_labels
        assert [f.labels for f in src] == [None, None]
    with open_source(str(tmp_path / "test" / "f001.png")) as src:
        (only,) = list(src)
    np.testing.assert_array_equal(only.rgb, written[1][0])
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "nope"))


@pytest.mark.ros
def test_video_source(tmp_path):
    from msseg_ros.tools.sources import open_source

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    seq = SceneSequence(1, 64, 48)
    refs = [seq.frame(i).rgb for i in range(5)]
    for rgb in refs:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    with open_source(str(path)) as src:
        assert src.kind == "video" and not src.has_labels
        frames = list(src)
    assert len(frames) == 5
    for i, (f, ref) in enumerate(zip(frames, refs, strict=True)):
        assert f.rgb.shape == (48, 64, 3)
        assert np.abs(f.rgb.astype(int) - ref).mean() < 12  # MJPEG is lossy
        assert f.stamp_ns == pytest.approx(i * 100_000_000, abs=2_000_000)


def _write_bag(path: Path, n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """A rosbag2 (mcap) like a driving log: bgr8 camera, CameraInfo, mono8 ground truth, plus an output
    image topic that must not be mistaken for the camera."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    Image, Header, Time = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"], \
        ts.types["builtin_interfaces/msg/Time"]
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    RoI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    seq = SceneSequence(4, 64, 48)
    out = []
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        cam = w.add_connection("/front/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        gt = w.add_connection("/front/ground_truth/labels", "sensor_msgs/msg/Image", typestore=ts)
        info = w.add_connection("/front/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        other = w.add_connection("/aaa/overlay", "sensor_msgs/msg/Image", typestore=ts)
        k = seq.camera.intrinsics
        for i in range(n):
            f = seq.frame(i)
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            hdr = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam")
            bgr = cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR)
            img = Image(header=hdr, height=48, width=64, encoding="bgr8", is_bigendian=0, step=64 * 3,
                        data=bgr.reshape(-1))
            lab = Image(header=hdr, height=48, width=64, encoding="mono8", is_bigendian=0, step=64,
                        data=f.labels.reshape(-1))
            ci = CameraInfo(header=hdr, height=48, width=64, distortion_model="plumb_bob",
                            d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1),
                            p=np.c_[k, np.zeros(3)].reshape(-1), binning_x=0, binning_y=0,
                            roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            w.write(other, stamp, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
            w.write(cam, stamp, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
            w.write(info, stamp, ts.serialize_cdr(ci, "sensor_msgs/msg/CameraInfo"))
            w.write(gt, stamp + 1000, ts.serialize_cdr(lab, "sensor_msgs/msg/Image"))  # stored after its image
            out.append((f.rgb, f.labels))
    return out


@pytest.mark.ros
def test_bag_source(tmp_path):
    from msseg_ros.tools.sources import open_source

    written = _write_bag(tmp_path / "drive")
    with open_source(str(tmp_path / "drive")) as src:
        assert src.kind == "rosbag" and src.image_topic == "/front/image_raw"
        assert src.has_labels and src.labels_topic == "/front/ground_truth/labels"
        np.testing.assert_allclose(src.camera.intrinsics, SceneSequence(4, 64, 48).camera.intrinsics)
        frames = list(src)
    assert len(frames) == 3
    for i, (f, (rgb, lab)) in enumerate(zip(frames, written, strict=True)):
        np.testing.assert_array_equal(f.rgb, rgb)  # bgr8 decoded to RGB
        np.testing.assert_array_equal(f.labels, lab)
        assert f.stamp_ns == 1_700_000_000_000_000_000 + i * 100_000_000
    mcap = next((tmp_path / "drive").glob("*.mcap"))
    with open_source(str(mcap), image_topic="/aaa/overlay") as src:  # a bare .mcap, an explicit topic
        assert src.image_topic == "/aaa/overlay" and len(list(src)) == 3
    with pytest.raises(ValueError, match="not in"):
        open_source(str(tmp_path / "drive"), image_topic="/nope")


# -- the camera node -----------------------------------------------------------------------------
class _Listener:
    """A real rclpy subscriber (own context) to a camera's image, camera_info and ground truth."""

    def __init__(self, ns: str, reliable: bool = True, transient_local: bool = False, depth: int = 50):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from msseg_ros.transport.graph import PrivateContext

        self.got: dict[str, dict[tuple[int, int], object]] = {"image": {}, "camera_info": {}, "labels": {}}
        self.lock = threading.Lock()
        self._ros = PrivateContext("camera_test_listener")
        policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=depth, reliability=policy, durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local
                         else DurabilityPolicy.VOLATILE)
        for key, topic, typ in (("image", f"{ns}/image", Image), ("camera_info", f"{ns}/camera_info", CameraInfo),
                                ("labels", f"{ns}/ground_truth/labels", Image)):
            self._ros.node.create_subscription(typ, topic, lambda m, k=key: self._on(k, m), qos)

    def _on(self, key: str, msg) -> None:
        with self.lock:
            self.got[key][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    def close(self) -> None:
        self._ros.close()


def run_camera(*ros_args: str, timeout: float = 90.0) -> tuple[int, str]:
    """Run the camera node to its end (the way users start it): exit status and its output."""
    from msseg_ros.transport.graph import NodeProcess

    with NodeProcess("synthetic_camera", ["--ros-args", *ros_args]) as camera:
        return camera.wait(timeout), camera.output()


@pytest.mark.ros
def test_camera_node_publishes_image_info_and_labels_with_one_stamp():
    from helpers_ros import namespace

    ns = namespace("synthcam_test")
    listener = _Listener(ns, transient_local=True)  # all four frames, however late its side of the match
    try:
        status, output = run_camera("-r", f"__ns:={ns}", "-p", "count:=4", "-p", "width:=160", "-p", "height:=120",
                                    "-p", "rate:=20.0", "-p", "seed:=7", "-p", "wait_for_subscribers:=1",
                                    "-p", "durability:=transient_local")
        assert status == 0, output
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and min(len(v) for v in listener.got.values()) < 4:
            time.sleep(0.05)
    finally:
        listener.close()
    got = listener.got
    assert len(got["image"]) == 4, output
    assert set(got["image"]) == set(got["camera_info"]) == set(got["labels"])  # identical stamps
    k = intrinsics(160, 120, 60.0)
    ref = SceneSequence(7, 160, 120, fps=20.0)
    for i, stamp in enumerate(sorted(got["image"])):
        img, info, lab = got["image"][stamp], got["camera_info"][stamp], got["labels"][stamp]
        assert (img.encoding, img.width, img.height, img.step) == ("rgb8", 160, 120, 480)
        assert lab.encoding == "mono8" and lab.step == 160
        assert img.header.frame_id == info.header.frame_id == lab.header.frame_id == "camera_optical_frame"
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), k)
        assert (info.width, info.height) == (160, 120)
        np.testing.assert_array_equal(np.frombuffer(img.data, np.uint8).reshape(120, 160, 3), ref.frame(i).rgb)
        np.testing.assert_array_equal(np.frombuffer(lab.data, np.uint8).reshape(120, 160), ref.frame(i).labels)


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)


@pytest.mark.ros
def test_a_transient_local_camera_keeps_its_frames_for_a_reader_that_matches_late():
    """What `msseg-demo` relies on when a loaded machine delays a reader's match: with `durability:
    transient_local` the frames published before a (transient_local) reader matched still reach it."""
    from helpers_ros import namespace

    from msseg_ros.transport.graph import NodeProcess

    ns = namespace("synthcam_late_test")
    early, late = _Listener(ns), None
    args = ["--ros-args", "-r", f"__ns:={ns}", "-p", "width:=160", "-p", "height:=120", "-p", "rate:=20.0",
            "-p", "seed:=7", "-p", "durability:=transient_local", "-p", "qos_depth:=200"]
    try:
        with NodeProcess("synthetic_camera", args) as camera:
            _wait_until(lambda: len(early.got["labels"]) >= 3, 60)
            assert len(early.got["labels"]) >= 3, camera.output()
            # joins after those frames went out; its history holds the camera's whole one (200), which
            # arrives at once: a shorter one keeps only the newest of them (as the demo's readers hold its 30)
            late = _Listener(ns, transient_local=True, depth=200)
            first = min(early.got["image"])
            _wait_until(lambda: all(first in late.got[k] for k in late.got), 20)
    finally:
        early.close()
        if late is not None:
            late.close()
    for key in ("image", "camera_info", "labels"):
        assert first in late.got[key], f"{key}: the frame published before the reader matched never reached it"
    np.testing.assert_array_equal(np.frombuffer(late.got["image"][first].data, np.uint8),
                                  np.frombuffer(early.got["image"][first].data, np.uint8))
    status, output = run_camera("-p", "durability:=sometimes", timeout=60)
    assert status != 0 and "durability must be volatile or transient_local" in output


@pytest.mark.ros
def test_camera_node_replays_a_folder_and_rejects_a_missing_source(tmp_path):
    from helpers_ros import namespace

    ns = namespace("synthcam_folder_test")
    written = _write_folder(tmp_path, n=3)
    listener = _Listener(ns, reliable=False)  # a reliable reader would refuse the best-effort camera
    try:
        status, output = run_camera("-r", f"__ns:={ns}", "-p", f"source:={tmp_path / 'test'}", "-p", "rate:=20.0",
                                    "-p", "wait_for_subscribers:=1", "-p", "reliability:=best_effort")
        assert status == 0, output  # ends with the folder
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(listener.got["labels"]) < 3:
            time.sleep(0.05)
    finally:
        listener.close()
    assert "source ended after 3 frames" in output
    labels = [np.frombuffer(listener.got["labels"][s].data, np.uint8).reshape(48, 64)
              for s in sorted(listener.got["labels"])]
    assert len(labels) == 3
    for lab, (_, ref) in zip(labels, written, strict=True):
        np.testing.assert_array_equal(lab, ref)

    status, output = run_camera("-p", f"source:={tmp_path / 'missing'}", timeout=60)
    assert status == 2 and "does not exist" in output
