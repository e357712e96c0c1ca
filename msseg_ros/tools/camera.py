"""A camera node that needs no camera: the built-in synthetic street, or a replay of images, a video
or a recording (see `msseg_ros.tools.sources`).

    synthetic_camera --ros-args -r __ns:=/camera -p rate:=10.0
    synthetic_camera --ros-args -r __ns:=/camera -p source:=/data/CamVid/test -p rate:=5.0

Publishes, all with the same header (stamp = publish time, or the recording's stamps with
`use_source_stamps`; frame_id = `frame_id`):

* ``image`` (sensor_msgs/Image, rgb8),
* ``camera_info`` (sensor_msgs/CameraInfo: the renderer's exact pinhole model; for files, the
  recording's CameraInfo if it has one, else a pinhole with horizontal FOV `hfov_deg`),
* ``ground_truth/labels`` (sensor_msgs/Image, mono8 CamVid ids, 255 = void) when the source has labels.

The camera calibration is the source's (scaled to the published size), else an ideal pinhole with
horizontal field of view `hfov_deg`.

`count` frames (0 = until the source ends, forever for the synthetic street), then the node exits 0.
The synthetic camera sits 1.5 m above a flat road, pitched 3 degrees down (see msseg_core.synthetic).
Rendering takes about 0.13 s of one CPU core per 480x360 frame (0.04 s at 160x120): above that rate
frames come as fast as they render, with their true publish stamps.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from msseg_core.ground.camera import PinholeCamera
from msseg_ros.tools.sources import Frame, FrameSource, open_source
from msseg_ros.transport import topics
from msseg_ros.transport.graph import run_node
from msseg_ros.transport.image_codec import encode_image
from msseg_ros.transport.messages import camera_info_msg
from msseg_ros.transport.qos import apply_fastdds_profile

NODE_NAME = "synthetic_camera"


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
        self.frame_id = str(declare("frame_id", topics.CAMERA_FRAME, "frame_id of every header (an optical frame)"))
        seed = int(declare("seed", 0, "Seed of the synthetic street"))
        self.count = int(declare("count", 0, "Frames to publish, then exit; 0 = until the source ends"))
        reliability = str(declare("reliability", "reliable", "QoS reliability: reliable or best_effort"))
        depth = int(declare("qos_depth", 5, "QoS history depth"))
        durability = str(declare("durability", "volatile", "QoS durability: volatile, or transient_local to keep "
                                 "the last qos_depth messages for readers that match late"))
        hfov = float(declare("hfov_deg", 60.0, "Horizontal field of view (synthetic camera; files without "
                                                 "a CameraInfo)"))
        self.loop = bool(declare("loop", False, "Start a file source again at its end"))
        self.use_source_stamps = bool(declare("use_source_stamps", False,
                                              "Stamp frames with the recording's stamps instead of now"))
        image_topic = str(declare("image_topic", "", "Image topic of a recording; '' = the first camera topic"))
        self.wait_for_subscribers = int(declare("wait_for_subscribers", 0, "Publish nothing until `image` and "
                                                "`camera_info` have this many subscribers each and "
                                                "ground_truth/labels one (so no reader misses the first frames); "
                                                "0 = publish at once"))

        if self.rate <= 0:
            raise ValueError(f"parameter rate must be > 0, got {self.rate}")
        if reliability not in ("reliable", "best_effort"):
            raise ValueError(f"parameter reliability must be reliable or best_effort, got {reliability!r}")
        if durability not in ("volatile", "transient_local"):
            raise ValueError(f"parameter durability must be volatile or transient_local, got {durability!r}")
        if self.count < 0 or depth < 1:
            raise ValueError(f"parameters count >= 0 and qos_depth >= 1 needed, got {self.count}, {depth}")
        self._open = lambda: open_source(self.source_spec, seed=seed, width=width, height=height, fps=self.rate,
                                         image_topic=image_topic or None, hfov_deg=hfov)
        self.hfov = hfov
        self.source: FrameSource = self._open()
        self._frames = iter(self.source)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                         reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if durability == "transient_local"
                         else DurabilityPolicy.VOLATILE)
        self.image_pub = self.create_publisher(Image, topics.IMAGE, qos)
        self.info_pub = self.create_publisher(CameraInfo, topics.CAMERA_INFO, qos)
        self.labels_pub = self.create_publisher(Image, topics.GROUND_TRUTH, qos) if self.source.has_labels \
            else None
        self.published = 0
        self.done = False
        self._ready_since: float | None = None
        self._cameras: dict[tuple[int, int], PinholeCamera] = {}
        self.timer = self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(
            f"publishing {self.source.describe()} at {self.rate:g} Hz on {self.image_pub.topic_name}"
            f"{' with ground truth on ' + self.labels_pub.topic_name if self.labels_pub else ''} ({reliability}"
            f"{', ' + str(self.count) + ' frames' if self.count else ''})")

    def _camera(self, width: int, height: int) -> PinholeCamera:
        """The calibration of frames of this size: the source's, scaled; else the ideal pinhole."""
        key = (width, height)
        if key not in self._cameras:
            known = self.source.camera
            self._cameras[key] = (known.scaled_to(height, width) if known is not None
                                  else PinholeCamera.from_hfov(width, height, self.hfov))
        return self._cameras[key]

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
        """With wait_for_subscribers = N > 0: True once `image` and `camera_info` have N subscribers each
        (whoever reads the images, e.g. the node and the demo, reads their calibration too: the node
        matching first must not let the first CameraInfo go out before the demo's reader is there) and
        the ground truth one; then 0.2 s more, so the readers' side of the match completes too. On a loaded
        machine a reader can still match later than that: `durability: transient_local` (with a
        transient_local reader) is the guarantee, the wait only saves the history's memory."""
        if self.wait_for_subscribers <= 0:
            return True
        if self._ready_since is None:
            wanted = [(self.image_pub, self.wait_for_subscribers), (self.info_pub, self.wait_for_subscribers)]
            if self.labels_pub is not None:
                wanted.append((self.labels_pub, 1))
            if any(pub.get_subscription_count() < n for pub, n in wanted):
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
        image = encode_image(frame.rgb, "rgb8", header)
        labels = encode_image(frame.labels, "mono8", header) if frame.labels is not None else None
        # The image goes last: whoever has a frame's image (or the node's answer to it) was sent its
        # calibration and labels already, even when the camera is stopped in the middle of a frame.
        self.info_pub.publish(camera_info_msg(self._camera(w, h), header))
        if self.labels_pub is not None and labels is not None:
            self.labels_pub.publish(labels)
        self.image_pub.publish(image)
        self.published += 1
        if self.count and self.published >= self.count:
            self.get_logger().info(f"published {self.published} frames")
            self.done = True

    def destroy_node(self) -> None:
        self.source.close()
        super().destroy_node()


def _spin_until_done(node: SyntheticCamera) -> None:
    while rclpy.ok() and not node.done:
        rclpy.spin_once(node, timeout_sec=0.1)
    # Give reliable subscribers a moment to take the last frames before the publisher goes away.
    deadline = time.monotonic() + 0.5
    while rclpy.ok() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)


def main(args: list[str] | None = None) -> int:
    """Console script `synthetic_camera`: exits 0 after `count` frames or at the end of a file source;
    2 with one error line for a bad parameter or an unreadable source."""
    apply_fastdds_profile()  # before rclpy.init; the sender's shared-memory segment must hold a whole frame
    return run_node(NODE_NAME, SyntheticCamera, args, spin=_spin_until_done, config_errors=(Exception,))


if __name__ == "__main__":
    sys.exit(main())
