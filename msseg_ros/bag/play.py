"""`msseg-bag play`: publish a bag's messages into the ROS graph as recorded (raw CDR), paced by the
log timestamps scaled by 1/rate, or lock-step with the segmentation node's labels."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msseg_ros.bag.info import bag_info, pick_image_topic
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import cdr_restamp, cdr_stamp
from msseg_ros.transport.messages import HEADER_FIRST_TYPES, ros_message_class

LABELS_TOPIC = topics.in_namespace(topics.NAMESPACE, topics.LABELS)
"""Where the player waits for the node's labels in lock-step (the launch file's default)."""


@dataclass
class PlayStats:
    """What a playback did (to_dict: the JSON `msseg-bag play` prints)."""

    messages: int = 0  # published, every topic
    frames: int = 0  # camera images published
    frames_answered: int = 0  # lock-step: images whose labels came back
    frames_lost: int = 0  # lock-step: images whose labels did not come back in time
    loops: int = 0  # times through the bag
    lost_stamps: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"messages": self.messages, "frames": self.frames, "frames_answered": self.frames_answered,
                "frames_lost": self.frames_lost, "loops": self.loops}


class LabelsWatcher:
    """Stamps of the labels the node has published (raw subscription: only the CDR stamp is read)."""

    def __init__(self, node: Any, topic: str):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self._cond = threading.Condition()
        self._seen: OrderedDict[int, None] = OrderedDict()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.topic = topic
        self.sub = node.create_subscription(Image, topic, self._callback, qos, raw=True)

    def _callback(self, raw: bytes) -> None:
        with self._cond:
            self._seen[cdr_stamp(raw)] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
            self._cond.notify_all()

    def wait_for(self, stamp: int, timeout: float, stop: threading.Event | None = None) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while stamp not in self._seen:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(min(left, 0.1))
            return True


class BagPlayer:
    """Publishes a bag's messages as recorded (raw CDR), in time order, paced by the log timestamps
    scaled by 1/rate, or lock-step: after each image, wait for the node's labels with its stamp.

    restamp: replace each header stamp by the wall-clock time of publication (messages that shared a
    stamp in the bag share the new one), so live consumers measure real end-to-end latency."""

    def __init__(self, node: Any, bag: str | os.PathLike, rate: float = 1.0, loop: bool = False,
                 lockstep: bool = False, labels_topic: str = LABELS_TOPIC, timeout: float = 10.0,
                 first_timeout: float = 60.0, restamp: bool = False, topics: Sequence[str] | None = None,
                 image_topic: str | None = None, log: Callable[[str], None] = print):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.node, self.bag, self.rate, self.loop = node, Path(bag), float(rate), loop
        self.lockstep, self.timeout, self.first_timeout, self.restamp = lockstep, timeout, first_timeout, restamp
        self.log = log
        self.info = bag_info(self.bag)
        wanted = set(topics) if topics else set(self.info.topics)
        missing = wanted - set(self.info.topics)
        if missing:
            raise ValueError(f"topics {sorted(missing)} are not in the bag; topics: {sorted(self.info.topics)}")
        self.topics = {t: ty for t, (ty, _) in self.info.topics.items() if t in wanted}
        image_candidates = {t: v for t, v in self.info.topics.items() if t in self.topics}
        try:
            self.image_topic: str | None = pick_image_topic(image_candidates, image_topic)
        except ValueError:
            if lockstep or image_topic:
                raise
            self.image_topic = None  # a bag without camera images: play it all the same
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {t: node.create_publisher(ros_message_class(ty), t, qos) for t, ty in self.topics.items()}
        self.watcher = LabelsWatcher(node, labels_topic) if lockstep else None
        self.stats = PlayStats()
        self._new_stamps: OrderedDict[int, int] = OrderedDict()

    def wait_for_subscribers(self, timeout: float, topics: Iterable[str] | None = None,
                             stop: threading.Event | None = None, settle: float = 0.5) -> bool:
        """Wait until every named topic (default: the image topic, else any topic) has a subscriber,
        and in lock-step the labels topic a publisher, then `settle` seconds for the other side of
        discovery to finish too (the publisher sees a match before the subscriber does)."""
        if topics is None:
            topics = [self.image_topic] if self.image_topic else []
        topics = list(topics)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            subs_ok = all(self.publishers[t].get_subscription_count() > 0 for t in topics) if topics else any(
                p.get_subscription_count() > 0 for p in self.publishers.values())
            labels_ok = self.watcher is None or self.node.count_publishers(self.watcher.topic) > 0
            if subs_ok and labels_ok:
                time.sleep(settle)
                return True
            time.sleep(0.05)
        return False

    def _groups(self) -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
        """(log time, [(topic, raw)]) for messages sharing a log time, in bag order."""
        from rosbags.rosbag2 import Reader

        with Reader(self.bag) as reader:
            conns = [c for c in reader.connections if c.topic in self.topics]
            group: list[tuple[str, bytes]] = []
            group_t = None
            for conn, t, raw in reader.messages(connections=conns):
                if group and t != group_t:
                    yield group_t, group
                    group = []
                group_t = t
                group.append((conn.topic, bytes(raw)))
            if group:
                yield group_t, group

    def _restamped(self, topic: str, raw: bytes, log_t: int) -> bytes:
        if not self.restamp or self.topics[topic] not in HEADER_FIRST_TYPES:
            return raw
        old = cdr_stamp(raw)
        new = self._new_stamps.get(old)
        if new is None:
            new = old + (time.time_ns() - log_t)
            self._new_stamps[old] = new
            while len(self._new_stamps) > 1000:
                self._new_stamps.popitem(last=False)
        return cdr_restamp(raw, new)

    def run(self, stop: threading.Event | None = None) -> PlayStats:
        """Play until the end (or forever with loop, until `stop` is set); returns the statistics."""
        stop = stop or threading.Event()
        while not stop.is_set():
            t0_wall, t0_bag = time.monotonic(), None
            for log_t, group in self._groups():
                if stop.is_set():
                    break
                if t0_bag is None:
                    t0_bag = log_t
                if not self.lockstep:
                    target = t0_wall + (log_t - t0_bag) / 1e9 / self.rate
                    while not stop.is_set() and (left := target - time.monotonic()) > 0:
                        time.sleep(min(left, 0.1))
                image_stamp = None
                for topic, raw in group:
                    raw = self._restamped(topic, raw, log_t)
                    self.publishers[topic].publish(raw)
                    self.stats.messages += 1
                    if topic == self.image_topic:
                        self.stats.frames += 1
                        image_stamp = cdr_stamp(raw)
                if self.lockstep and image_stamp is not None:
                    timeout = self.first_timeout if self.stats.frames == 1 else self.timeout
                    assert self.watcher is not None
                    if self.watcher.wait_for(image_stamp, timeout, stop):
                        self.stats.frames_answered += 1
                    elif not stop.is_set():
                        self.stats.frames_lost += 1
                        self.stats.lost_stamps.append(image_stamp)
                        self.log(f"no labels for the frame stamped {image_stamp} within {timeout:.1f} s: lost")
            self.stats.loops += 1
            if not self.loop:
                break
        return self.stats


def play_bag(bag: str, rate: float = 1.0, loop: bool = False, lockstep: bool = False,
             labels_topic: str = LABELS_TOPIC, timeout: float = 10.0, restamp: bool = False,
             topics: Sequence[str] | None = None, wait_subscribers: float = 10.0,
             image_topic: str | None = None, wait_for: Sequence[str] | None = None,
             stop: threading.Event | None = None) -> dict:
    """Play a bag into the graph from this process (see BagPlayer); returns the statistics.

    Before the first message, waits up to `wait_subscribers` seconds for a subscriber on each topic
    of `wait_for` (default: the image topic)."""
    from msseg_ros.transport.graph import PrivateContext
    from msseg_ros.transport.qos import apply_fastdds_profile

    stop = stop or threading.Event()
    apply_fastdds_profile()  # large frames need the shared-memory profile; a user's choice wins
    ros = PrivateContext("msseg_bag_player", args=None, threads=2)
    try:
        player = BagPlayer(ros.node, bag, rate=rate, loop=loop, lockstep=lockstep, labels_topic=labels_topic,
                           timeout=timeout, restamp=restamp, topics=topics, image_topic=image_topic,
                           log=lambda m: ros.node.get_logger().warning(m))
        if wait_for:
            unknown = [t for t in wait_for if t not in player.publishers]
            if unknown:
                raise ValueError(f"--wait-for topics {unknown} are not played from this bag")
        if wait_subscribers > 0 and not player.wait_for_subscribers(wait_subscribers, topics=wait_for or None,
                                                                    stop=stop):
            ros.node.get_logger().warning(f"no subscriber after {wait_subscribers:.0f} s; playing anyway")
        return player.run(stop).to_dict()
    finally:
        ros.close()
