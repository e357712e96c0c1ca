"""Small helpers on ROS messages that the nodes and the tools share: stamps, label images, CameraInfo.

They take rclpy and `rosbags` messages alike wherever they read fields, so a node's callback and a bag
reader use the same code (images in every encoding are `image_codec`'s business).
"""

from __future__ import annotations

import array
import importlib
from typing import Any

import numpy as np

from msseg_core.ground.camera import PinholeCamera

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
"""Message types that carry camera images."""
HEADER_FIRST_TYPES = {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
                      "nav_msgs/msg/OccupancyGrid", "diagnostic_msgs/msg/DiagnosticArray",
                      "sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Imu", "nav_msgs/msg/Odometry"}
"""Message types whose CDR starts with std_msgs/Header: their stamp can be read and rewritten in place."""
MSSEG_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
               "nav_msgs/msg/OccupancyGrid", "diagnostic_msgs/msg/DiagnosticArray")
"""The types msseg publishes or consumes; `msseg-bag record` and `play` also take any other importable type."""


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def mono8_array(msg: Any) -> np.ndarray:
    """A mono8 (or 8UC1) Image -> H x W uint8 ids, honouring `step`; rclpy and rosbags messages alike."""
    if str(msg.encoding).lower() not in ("mono8", "8uc1"):
        raise ValueError(f"label images must be mono8, got {msg.encoding!r}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if step < w or data.size < step * h:
        raise ValueError(f"label image {w}x{h} with step {step} has {data.size} bytes")
    return data[: step * h].reshape(h, step)[:, :w].copy()


def ros_message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class (ImportError/AttributeError if absent)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def camera_info_msg(camera: PinholeCamera, header: Any) -> Any:
    """The rclpy sensor_msgs/CameraInfo of a camera, with `header` (ROI and binning: none)."""
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(header=header, **camera.camera_info_fields())


def occupancy_grid(grid: Any, stamp: Any) -> Any:
    """A road grid (cells, resolution, origin, frame_id: `msseg_ros.node.road_grid.RoadGrid`) as a
    nav_msgs/OccupancyGrid stamped with `stamp` (the image's: the grid says where the road was then)."""
    from nav_msgs.msg import OccupancyGrid

    cells = np.ascontiguousarray(grid.cells, dtype=np.int8)
    msg = OccupancyGrid()
    msg.header.stamp = stamp
    msg.header.frame_id = grid.frame_id
    msg.info.map_load_time = stamp
    msg.info.resolution = float(grid.resolution)
    msg.info.height, msg.info.width = cells.shape
    msg.info.origin.position.x, msg.info.origin.position.y, msg.info.origin.position.z = grid.origin
    msg.info.origin.orientation.w = 1.0
    msg.data = array.array("b", cells.tobytes())
    return msg
