"""A camera node that needs no camera: the built-in synthetic street, or a replay of images, a video
or a recording (see `msseg_ros.input_sources`).

    synthetic_camera --ros-args -r __ns:=/camera -p rate:=10.0
    synthetic_camera --ros-args -r __ns:=/camera -p source:=/data/CamVid/test -p rate:=5.0

Publishes, all with the same header (stamp = publish time, or the recording's stamps with
`use_source_stamps`; frame_id = `frame_id`):

* ``image`` (sensor_msgs/Image, rgb8),
* ``camera_info`` (sensor_msgs/CameraInfo: the renderer's exact pinhole model; for files, the
  recording's CameraInfo if it has one, else a pinhole with horizontal FOV `hfov_deg`),
* ``ground_truth/labels`` (sensor_msgs/Image, mono8 CamVid ids, 255 = void) when the source has labels.

`count` frames (0 = until the source ends, forever for the synthetic street), then the node exits 0.
The synthetic camera sits 1.5 m above a flat road, pitched 3 degrees down (see msseg_core.synthetic).
Rendering takes about 0.13 s of one CPU core per 480x360 frame (0.04 s at 160x120): above that rate
frames come as fast as they render, with their true publish stamps.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from msseg_ros.image_codec import encode_image
from msseg_ros.input_sources import Frame, FrameSource, open_source

NODE_NAME = "synthetic_camera"
EXIT_CONFIG_ERROR = 2
DEFAULT_FRAME_ID = "camera_optical_frame"  # REP-103 optical frame: z forward, x right, y down


def camera_info_msg(K: np.ndarray, width: int, height: int, header: Header,
                    distortion: tuple[str, list[float]] | None = None) -> CameraInfo:
    """CameraInfo of a pinhole camera (P = [K | 0], R = I): what a rectified monocular camera sends."""
    k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = int(width), int(height)
    model, coeffs = distortion if distortion else ("plumb_bob", [0.0] * 5)
    msg.distortion_model = model
    msg.d = [float(v) for v in coeffs]
    msg.k = [float(v) for v in k.reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(k[0, 0]), 0.0, float(k[0, 2]), 0.0, 0.0, float(k[1, 1]), float(k[1, 2]), 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def pinhole_K(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """K for a source that does not know its camera: centred principal point, square pixels."""
    from msseg_core.synthetic import intrinsics

    return intrinsics(width, height, hfov_deg)


def apply_profile(environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """`qos.apply_fastdds_profile` (the packaged large-image Fast DDS profile unless the user set one),
    falling back to the source tree's config/ where ament_index cannot be asked (AMENT_PREFIX_PATH
    unset raises OSError there)."""
    import os

    from msseg_ros.qos import FASTDDS_PROFILE_NAME, PROFILE_ENV_VARS, apply_fastdds_profile

    env = os.environ if environ is None else environ
    try:
        return apply_fastdds_profile(env)
    except OSError:
        for var in PROFILE_ENV_VARS:
            if env.get(var):
                return env[var], "user"
        from pathlib import Path

        path = Path(__file__).resolve().parent.parent / "config" / FASTDDS_PROFILE_NAME
        if not path.is_file():
            return None, "missing"
        for var in PROFILE_ENV_VARS:
            env[var] = str(path)
        return str(path), "packaged"


def _stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


class SyntheticCamera(Node):
    """Publishes the frames of a FrameSource at a fixed rate."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

        def declare(name: str, default: Any, description: str) -> Any:
            return self.declare_parameter(name, default, ParameterDescriptor(description=description,
                                                                             read_only=True)).value

        self.source_spec = str(declare("source", "", "'' or 'synthetic[:SEED]', an image folder, a video, a rosbag"))
        self.rate = float(declare("rate", 10.0, "Frames per second"))
        width = int(declare("width", 0, "Output width; 0 = 480 for the synthetic street, native for files"))
        height = int(declare("height", 0, "Output height; 0 = 360 for the synthetic street, native for files"))
        self.frame_id = str(declare("frame_id", DEFAULT_FRAME_ID, "frame_id of every header (an optical frame)"))
        seed = int(declare("seed", 0, "Seed of the synthetic street"))
        self.count = int(declare("count", 0, "Frames to publish, then exit; 0 = until the source ends"))
        reliability = str(declare("reliability", "reliable", "QoS reliability: reliable or best_effort"))
        depth = int(declare("qos_depth", 5, "QoS history depth"))
        hfov = float(declare("hfov_deg", 60.0, "Horizontal field of view (synthetic camera; files without "
                                                 "a CameraInfo)"))
        self.loop = bool(declare("loop", False, "Start a file source again at its end"))
        self.use_source_stamps = bool(declare("use_source_stamps", False,
                                              "Stamp frames with the recording's stamps instead of now"))
        image_topic = str(declare("image_topic", "", "Image topic of a recording; '' = the first camera topic"))
        self.wait_for_subscribers = int(declare("wait_for_subscribers", 0, "Publish nothing until `image` has "
                                                "this many subscribers and camera_info and ground_truth/labels "
                                                "one each (so a replay loses no frame); 0 = publish at once"))

        if self.rate <= 0:
            raise ValueError(f"parameter rate must be > 0, got {self.rate}")
        if reliability not in ("reliable", "best_effort"):
            raise ValueError(f"parameter reliability must be reliable or best_effort, got {reliability!r}")
        if self.count < 0 or depth < 1:
            raise ValueError(f"parameters count >= 0 and qos_depth >= 1 needed, got {self.count}, {depth}")
        self._open = lambda: open_source(self.source_spec, seed=seed, width=width, height=height, fps=self.rate,
                                         image_topic=image_topic or None, hfov_deg=hfov)
        self.hfov = hfov
        self.source: FrameSource = self._open()
        self._frames = iter(self.source)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                         reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        self.image_pub = self.create_publisher(Image, "image", qos)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", qos)
        self.labels_pub = self.create_publisher(Image, "ground_truth/labels", qos) if self.source.has_labels \
            else None
        self.published = 0
        self.done = False
        self._ready_since: float | None = None
        self._K_cache: dict[tuple[int, int], np.ndarray] = {}
        self.timer = self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(
            f"publishing {self.source.describe()} at {self.rate:g} Hz on {self.image_pub.topic_name}"
            f"{' with ground truth on ' + self.labels_pub.topic_name if self.labels_pub else ''} ({reliability}"
            f"{', ' + str(self.count) + ' frames' if self.count else ''})")

    def _K(self, width: int, height: int) -> np.ndarray:
        if self.source.K is not None:
            return self.source.K
        key = (width, height)
        if key not in self._K_cache:
            self._K_cache[key] = pinhole_K(width, height, self.hfov)
        return self._K_cache[key]

    def _next_frame(self) -> Frame | None:
        try:
            return next(self._frames)
        except StopIteration:
            if not self.loop or self.published == 0:
                return None
            self.source.close()
            self.source = self._open()
            self._frames = iter(self.source)
            return next(self._frames, None)

    def _subscribers_ready(self) -> bool:
        """With wait_for_subscribers = N > 0: True once `image` has N subscribers and every other topic
        one (then 0.2 s more, so the readers' side of the match completes too)."""
        if self.wait_for_subscribers <= 0:
            return True
        if self._ready_since is None:
            others = [self.info_pub] + ([self.labels_pub] if self.labels_pub is not None else [])
            if self.image_pub.get_subscription_count() < self.wait_for_subscribers or \
                    any(p.get_subscription_count() < 1 for p in others):
                return False
            self._ready_since = time.monotonic()
        return time.monotonic() - self._ready_since >= 0.2

    def _tick(self) -> None:
        if self.done or not self._subscribers_ready():
            return
        frame = self._next_frame()
        if frame is None:
            self.get_logger().info(f"source ended after {self.published} frames")
            self.done = True
            return
        if self.use_source_stamps and frame.stamp_ns is not None:
            stamp = _stamp(frame.stamp_ns)
        else:
            stamp = self.get_clock().now().to_msg()
        header = Header(stamp=stamp, frame_id=self.frame_id)
        h, w = frame.rgb.shape[:2]
        self.image_pub.publish(encode_image(frame.rgb, "rgb8", header))
        self.info_pub.publish(camera_info_msg(self._K(w, h), w, h, header, self.source.distortion))
        if self.labels_pub is not None and frame.labels is not None:
            self.labels_pub.publish(encode_image(frame.labels, "mono8", header))
        self.published += 1
        if self.count and self.published >= self.count:
            self.get_logger().info(f"published {self.published} frames")
            self.done = True

    def destroy_node(self) -> None:
        self.source.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `synthetic_camera`: exits 0 after `count` frames or at the end of a file source."""
    apply_profile()  # before rclpy.init; the sender's shared-memory segment must hold a whole frame
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = SyntheticCamera()
        except Exception as exc:  # a bad parameter or an unreadable source: one clear line, exit 2
            rclpy.logging.get_logger(NODE_NAME).error(f"cannot start: {' '.join(str(exc).split())}")
            return EXIT_CONFIG_ERROR
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        # Give reliable subscribers a moment to take the last frames before the publisher goes away.
        deadline = time.monotonic() + 0.5
        while rclpy.ok() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
