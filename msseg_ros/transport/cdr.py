"""Serialized (CDR) ROS 2 messages handled without rclpy's Python conversion.

rclpy turns a large sensor_msgs/Image into Python objects field by field, and a subscription pays that
for every message, even one the node then drops because a newer frame came in. Subscribing with
`raw=True` costs a copy of the bytes instead, and the `rosbags` deserializer turns only the frame that
is actually processed into a message (the costs: BENCHMARKS.md, node overhead by stage). The same
typestore reads and writes the bags (`msseg_ros.bag`), so message definitions are the real Jazzy ones.

Stamps of header-first messages are read and written directly in the CDR bytes: after the 4-byte
encapsulation header come the stamp's int32 sec and uint32 nanosec, in the byte order the
encapsulation names (odd kind = little endian).
"""

from __future__ import annotations

import struct
from typing import Any

_TYPESTORE = None


def typestore():
    """The ROS 2 Jazzy typestore of `rosbags` (built once: it parses every message definition)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE


def deserialize(raw: bytes | memoryview, msgtype: str) -> Any:
    """CDR bytes -> a `rosbags` message of `msgtype` (e.g. 'sensor_msgs/msg/Image'); uint8 arrays come
    back as numpy arrays. Raises on truncated or malformed data."""
    return typestore().deserialize_cdr(raw, msgtype)


def _stamp_format(raw: bytes | bytearray | memoryview) -> str:
    return "<iI" if raw[1] & 1 else ">iI"


def cdr_stamp(raw: bytes | bytearray | memoryview) -> int:
    """Header stamp (integer nanoseconds) of a serialized header-first message."""
    sec, nsec = struct.unpack_from(_stamp_format(raw), raw, 4)
    return sec * 1_000_000_000 + nsec


def set_cdr_stamp(buf: bytearray, stamp_ns: int) -> None:
    """Write the header stamp of a serialized header-first message in place (cdr_stamp's inverse)."""
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    struct.pack_into(_stamp_format(buf), buf, 4, sec, nsec)


def cdr_restamp(raw: bytes | memoryview, stamp_ns: int) -> bytes:
    """A copy of a serialized header-first message with its header stamp replaced."""
    out = bytearray(raw)
    set_cdr_stamp(out, stamp_ns)
    return bytes(out)
