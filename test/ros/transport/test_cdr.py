"""Serialized messages: stamps read and written in the CDR bytes, and rosbags' deserializer, checked
against rclpy's own (de)serialization."""

import numpy as np
import pytest

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from msseg_ros.transport import cdr  # noqa: E402

pytestmark = pytest.mark.ros


def test_stamps_are_read_and_written_in_either_byte_order() -> None:
    msg = CameraInfo()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.width = 1_700_000_123, 456_789, 64
    little = serialize_message(msg)
    assert cdr.cdr_stamp(little) == 1_700_000_123_000_456_789
    back = deserialize_message(cdr.cdr_restamp(little, 42_000_000_007), CameraInfo)
    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.width) == (42, 7, 64)

    ros = cdr.deserialize(little, "sensor_msgs/msg/CameraInfo")
    big = bytearray(cdr.typestore().serialize_cdr(ros, "sensor_msgs/msg/CameraInfo", little_endian=False))
    assert big[1] & 1 == 0 and cdr.cdr_stamp(big) == 1_700_000_123_000_456_789
    cdr.set_cdr_stamp(big, 5_000_000_009)  # in place
    again = cdr.deserialize(bytes(big), "sensor_msgs/msg/CameraInfo")
    assert (again.header.stamp.sec, again.header.stamp.nanosec, again.width) == (5, 9, 64)


def test_rosbags_deserializer_reads_what_rclpy_wrote_and_refuses_truncated_data() -> None:
    data = np.random.default_rng(0).integers(0, 256, 3 * 5 * 7, dtype=np.uint8)
    msg = Image(height=5, width=7, encoding="rgb8", is_bigendian=0, step=21, data=data.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 12, 34, "camera_optical_frame"
    raw = serialize_message(msg)
    got = cdr.deserialize(raw, "sensor_msgs/msg/Image")
    assert (got.height, got.width, got.encoding, got.step, got.is_bigendian) == (5, 7, "rgb8", 21, 0)
    assert (got.header.stamp.sec, got.header.stamp.nanosec, got.header.frame_id) == (12, 34, "camera_optical_frame")
    np.testing.assert_array_equal(got.data, data)
    with pytest.raises(Exception):  # noqa: B017 - rosbags raises plain exceptions (struct, index, value errors)
        cdr.deserialize(raw[: len(raw) // 2], "sensor_msgs/msg/Image")
