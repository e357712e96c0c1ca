"""The transport floor of `msseg-bench node`: a node that answers every frame at once.

It subscribes to `image` exactly as the segmentation node does (raw, SensorDataQoS, taken by a thread
of its own) and answers each frame on every output topic that has a subscriber (`labels`, ...,
`road_mask`: reliable, the node's encodings, the frame's size and stamp), computing nothing. A frame's
round trip through it is what DDS and rclpy cost for the frame in and those outputs out between two
processes on this machine: the part of the node's end-to-end time that no node written with rclpy
can avoid.

Run as `python -m msseg_ros.bench.echo --ros-args -r __ns:=/somewhere` (not a console script).
"""

from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from msseg_ros.node.direct_take import DirectTake, NotByExecutor
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import deserialize, set_cdr_stamp
from msseg_ros.transport.graph import run_node
from msseg_ros.transport.image_codec import encode_image
from msseg_ros.transport.qos import apply_fastdds_profile, input_qos, output_qos

NODE_NAME = "msseg_transport_echo"


class TransportEcho(Node):
    """image in -> same-size outputs with the frame's stamp out, nothing computed."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self._replies: dict[tuple, bytearray] = {}  # (output, h, w) -> a serialized reply, restamped per frame
        self.output_pubs = {name: self.create_publisher(Image, name, output_qos()) for name in topics.OUTPUTS}
        self.image_sub = self.create_subscription(Image, topics.IMAGE, lambda msg: None, input_qos(), raw=True,
                                                  callback_group=NotByExecutor())
        self._taker = DirectTake(self.context, [self.image_sub], lambda _, raw: self.answer(raw))
        self._taker.start()

    def answer(self, raw: bytes) -> None:
        msg = deserialize(memoryview(raw), "sensor_msgs/msg/Image")
        h, w = int(msg.height), int(msg.width)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        for name, pub in self.output_pubs.items():
            if pub.get_subscription_count() == 0:  # as the node: nothing for an output nobody reads
                continue
            reply = self._replies.get((name, h, w))
            if reply is None:
                reply = self._replies[(name, h, w)] = self._blank(topics.OUTPUT_ENCODINGS[name], h, w)
            set_cdr_stamp(reply, stamp)
            pub.publish(bytes(reply))

    @staticmethod
    def _blank(encoding: str, h: int, w: int) -> bytearray:
        from rclpy.serialization import serialize_message

        shape = (h, w, 3) if encoding == "rgb8" else (h, w)
        return bytearray(serialize_message(encode_image(np.zeros(shape, np.uint8), encoding, Header())))

    def destroy_node(self) -> None:
        self._taker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    apply_fastdds_profile()  # the segmentation node's transport settings
    return run_node(NODE_NAME, TransportEcho, args)


if __name__ == "__main__":
    sys.exit(main())
