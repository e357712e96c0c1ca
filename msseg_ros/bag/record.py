"""`msseg-bag record`: subscribe (raw) to topics and write the CDR bytes to a rosbag2."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msseg_ros.bag.info import BAG_VERSION, storage_plugin
from msseg_ros.transport.cdr import typestore
from msseg_ros.transport.messages import MSSEG_TYPES, ros_message_class


def _record_qos(node: Any, topic: str) -> Any:
    """Like rosbag2: reliable / transient-local only if every publisher offers it."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    infos = node.get_publishers_info_by_topic(topic)
    reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    return QoSProfile(depth=100,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class BagRecorder:
    """Subscribes (raw) to topics and writes the CDR bytes with their receive time as log time.

    Callbacks only queue the bytes; `pump()` (called by the thread that created the recorder) writes
    them, because the sqlite3 storage may only be used from the thread that opened it."""

    def __init__(self, node: Any, out: str | os.PathLike, topics: Sequence[str], storage: str = "mcap",
                 types: dict[str, str] | None = None):
        from rosbags.rosbag2 import Writer

        self.node, self.out, self.topics, self.types = node, Path(out), list(topics), dict(types or {})
        self.writer = Writer(self.out, version=BAG_VERSION, storage_plugin=storage_plugin(storage))
        self.writer.open()
        self.counts: dict[str, int] = {t: 0 for t in self.topics}
        self._conns: dict[str, Any] = {}
        self._queue: queue.SimpleQueue[tuple[str, int, bytes]] = queue.SimpleQueue()
        self._closed = False
        self.subscriptions: list[Any] = []

    def discover(self, timeout: float, stop: threading.Event | None = None) -> list[str]:
        """Subscribe to every topic whose type is known (given or discovered); returns those missing."""
        deadline = time.monotonic() + timeout
        while True:
            graph = dict(self.node.get_topic_names_and_types())
            for topic in self.topics:
                if topic in self._conns:
                    continue
                msgtype = self.types.get(topic) or (graph.get(topic) or [None])[0]
                if msgtype is None:
                    continue
                if not self.types.get(topic) and not self.node.get_publishers_info_by_topic(topic):
                    continue
                self._subscribe(topic, msgtype)
            missing = [t for t in self.topics if t not in self._conns]
            if not missing or time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return missing
            time.sleep(0.1)

    def wait_matched(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Until every subscription is matched with a publisher, so a recording's clock starts when
        messages can flow (matching takes seconds on a loaded machine); False on timeout."""
        deadline = time.monotonic() + timeout
        while not all(sub.get_publisher_count() > 0 for sub in self.subscriptions):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            time.sleep(0.02)
        return True

    def _subscribe(self, topic: str, msgtype: str) -> None:
        try:
            cls = ros_message_class(msgtype)
        except (ImportError, AttributeError, ValueError):
            raise ValueError(f"{topic}: message type {msgtype} is not importable here "
                             f"(msseg records {', '.join(MSSEG_TYPES)} and other installed types)") from None
        if msgtype not in typestore().types:
            raise ValueError(f"{topic}: {msgtype} is not in the Jazzy typestore; cannot write its definition")
        self._conns[topic] = self.writer.add_connection(topic, msgtype, typestore=typestore())
        qos = _record_qos(self.node, topic)
        self.subscriptions.append(self.node.create_subscription(
            cls, topic, lambda raw, topic=topic: self._callback(topic, raw), qos, raw=True))

    def _callback(self, topic: str, raw: bytes) -> None:
        self._queue.put((topic, time.time_ns(), raw))

    def pump(self) -> int:
        """Write everything received so far; returns the number of messages written."""
        n = 0
        while True:
            try:
                topic, stamp, raw = self._queue.get_nowait()
            except queue.Empty:
                return n
            self.writer.write(self._conns[topic], stamp, raw)
            self.counts[topic] += 1
            n += 1

    def close(self) -> dict[str, int]:
        """Stop subscribing, write what is queued, finish the bag (metadata.yaml); idempotent."""
        if not self._closed:
            self._closed = True
            for sub in self.subscriptions:
                self.node.destroy_subscription(sub)
            self.pump()
            self.writer.close()
        return dict(self.counts)


def record_bag(out: str, topics: Sequence[str], duration: float | None = None, storage: str = "mcap",
               types: dict[str, str] | None = None, discovery_timeout: float = 10.0,
               stop: threading.Event | None = None) -> dict[str, int]:
    """Record topics until `duration` seconds have passed or `stop` is set; returns counts per topic."""
    from msseg_ros.transport.graph import PrivateContext
    from msseg_ros.transport.qos import apply_fastdds_profile

    stop = stop or threading.Event()
    apply_fastdds_profile()  # large frames need the shared-memory profile; a user's choice wins
    ros = PrivateContext("msseg_bag_recorder", args=None, threads=2)
    recorder = BagRecorder(ros.node, out, topics, storage=storage, types=types)
    try:
        missing = recorder.discover(discovery_timeout, stop)
        if missing:
            ros.node.get_logger().warning(f"no publisher (type unknown) for {missing}; not recorded")
        recorder.wait_matched(discovery_timeout, stop)
        end = time.monotonic() + duration if duration else None
        while not stop.is_set() and (end is None or time.monotonic() < end):
            if not recorder.pump():
                time.sleep(0.02)
        return recorder.close()
    finally:
        recorder.close()
        ros.close()
