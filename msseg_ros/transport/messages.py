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


POINT_DTYPE = np.dtype({"names": ["x", "y", "z", "class_id"], "formats": ["<f4", "<f4", "<f4", "u1"],
                        "offsets": [0, 4, 8, 12], "itemsize": 16})
"""One PointCloud2 point: x, y, z (float32, metres) and the class id (uint8), 16 bytes."""


def point_cloud(xyz: np.ndarray, classes: np.ndarray, frame_id: str, stamp: Any) -> Any:
    """A sensor_msgs/PointCloud2 of N x 3 points (height 1, dense) or of an organized rows x cols x 3 grid
    of them (NaN = no point: not dense), with a `class_id` field; stamped with the image's stamp."""
    from sensor_msgs.msg import PointCloud2, PointField

    xyz = np.asarray(xyz, dtype=np.float32)
    organized = xyz.ndim == 3
    rows, cols = xyz.shape[:2] if organized else (1, xyz.shape[0])
    points = np.zeros(rows * cols, dtype=POINT_DTYPE)
    flat = xyz.reshape(-1, 3)
    points["x"], points["y"], points["z"] = flat[:, 0], flat[:, 1], flat[:, 2]
    points["class_id"] = np.asarray(classes, dtype=np.uint8).reshape(-1)
    msg = PointCloud2()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = rows, cols
    msg.fields = [PointField(name=name, offset=POINT_DTYPE.fields[name][1], count=1,
                             datatype=PointField.UINT8 if name == "class_id" else PointField.FLOAT32)
                  for name in POINT_DTYPE.names]
    msg.is_bigendian = False
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = POINT_DTYPE.itemsize * cols
    msg.is_dense = not organized or bool(np.isfinite(flat).all())
    msg.data = array.array("B", points.tobytes())
    return msg


def cloud_points(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """The x, y, z (rows x cols x 3 float32) and class ids of a cloud written by `point_cloud` (rclpy or
    rosbags message): what a consumer reads back, for tests and tools."""
    if int(msg.point_step) != POINT_DTYPE.itemsize or [f.name for f in msg.fields] != list(POINT_DTYPE.names):
        raise ValueError("not an msseg ground-point cloud (fields x, y, z, class_id; 16-byte points)")
    points = np.frombuffer(bytes(msg.data), dtype=POINT_DTYPE).reshape(int(msg.height), int(msg.width))
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=-1)
    return xyz, points["class_id"].copy()


def label_info_available() -> bool:
    """Whether vision_msgs (LabelInfo) is importable: apt ROS 2 installs have it, the PyPI wheels do not."""
    try:
        importlib.import_module("vision_msgs.msg")
    except ImportError:
        return False
    return True


def label_info(class_names: list[str], stamp: Any, frame_id: str = "", threshold: float = 0.0) -> Any:
    """vision_msgs/LabelInfo: class id i is class_names[i] (what the labels image's values mean)."""
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)]
    msg.threshold = float(threshold)
    return msg
