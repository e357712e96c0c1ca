"""msseg-bag: rosbag2 files for evaluation and replay, without rosbag2_py (not installable from PyPI).

Subcommands
  make         a labelled dataset split -> rosbag2 (camera images, CameraInfo, ground-truth labels)
  eval         offline: every image in a bag through `Segmenter`, scored against the bag's labels
  play         publish a bag into the ROS graph (recorded timing x rate, or lock-step with the node)
  record       subscribe to topics and write them to a rosbag2 (the msg types msseg uses, and any
               other whose Python message package is importable)
  replay-eval  the segmentation node (subprocess) + player + live evaluator from one command
  info         topics, types, counts and time range of a bag (`ros2 bag info` is not installable)

Bags are written with the `rosbags` library through the ROS 2 Jazzy typestore, so message
definitions and RIHS01 type hashes in the metadata are the real ones and `ros2 bag info/play` open
them. Messages are moved as raw CDR wherever possible (play publishes the bytes, record writes the
bytes) so large images cost no (de)serialisation in Python.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msseg_ros.cdr import cdr_restamp, cdr_stamp, typestore

BAG_VERSION = 8
"""rosbag2 metadata version written: 8 is what Jazzy's rosbag2 writes and reads (and later releases read)."""

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"  # image_transport's name for the compressed stream
INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/ground_truth/labels"
LABELS_TOPIC = "/msseg/labels"
CAMERA_FRAME = "camera_optical_frame"
DEFAULT_START_S = 1_700_000_000.0
"""First header stamp of a made bag (seconds since the epoch): any fixed, non-zero time works."""

CAMVID_HFOV_DEG = 60.0
"""CamVid publishes no intrinsics; its 960x720 frames come from a camcorder behind the windscreen.
A 60 degree horizontal field of view (fx = fy = 831.4 px at 960 px width, principal point at the
image centre, no distortion) is a plausible stand-in, enough for the road grid's geometry."""

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
# Message types whose CDR starts with std_msgs/Header: their stamp can be read and rewritten in place.
HEADER_FIRST_TYPES = {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
                      "nav_msgs/msg/OccupancyGrid", "diagnostic_msgs/msg/DiagnosticArray",
                      "sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Imu", "nav_msgs/msg/Odometry"}
MSSEG_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
               "nav_msgs/msg/OccupancyGrid", "diagnostic_msgs/msg/DiagnosticArray")
"""The types msseg publishes or consumes; `record` and `play` also take any other importable type."""

def storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin

    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise ValueError(f"storage must be mcap or sqlite3, got {name!r}") from None


# -- small helpers shared with the evaluator ---------------------------------------------------
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


_FRAME_RE = re.compile(r"^(?P<seq>.+?)_f?(?P<frame>\d+)$")


def frame_key(name: str) -> tuple[str, int, str]:
    """Sort key from a CamVid name: '0001TP_006690.png' -> ('0001TP', 6690), 'Seq05VD_f00930' -> ('Seq05VD', 930).

    Names without a trailing frame number sort by name after those with one of the same prefix."""
    stem = Path(name).stem
    m = _FRAME_RE.match(stem)
    if m:
        return m.group("seq"), int(m.group("frame")), stem
    return stem, -1, stem


def camera_matrix(width: int, height: int, hfov_deg: float = CAMVID_HFOV_DEG) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of an ideal pinhole with the given horizontal field of view, square pixels."""
    fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    return float(fx), float(fx), (width - 1) / 2.0, (height - 1) / 2.0


def ros_message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class (ImportError/AttributeError if absent)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


# -- make --------------------------------------------------------------------------------------
def _stamp(ts, ns: int):
    return ts.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ts, ns: int, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=_stamp(ts, ns), frame_id=frame_id)


def _image_msg(ts, array: np.ndarray, encoding: str, header):
    channels = 1 if array.ndim == 2 else array.shape[2]
    return ts.types["sensor_msgs/msg/Image"](
        header=header, height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=0,
        step=array.shape[1] * channels, data=np.ascontiguousarray(array, dtype=np.uint8).reshape(-1))


def _compressed_msg(ts, rgb: np.ndarray, fmt: str, quality: int, header):
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} frame as {fmt}")
    return ts.types["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=buf.reshape(-1))


def _camera_info_msg(ts, width: int, height: int, hfov_deg: float, header):
    fx, fy, cx, cy = camera_matrix(width, height, hfov_deg)
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=header, height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5),
        k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], float), r=np.eye(3).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], float), binning_x=0, binning_y=0, roi=roi)


def make_bag(dataset: Any, out: str | os.PathLike, storage: str = "mcap", rate: float = 1.0,
             start_s: float = DEFAULT_START_S, image_format: str = "raw", jpeg_quality: int = 95,
             hfov_deg: float = CAMVID_HFOV_DEG, limit: int | None = None,
             custom: dict[str, str] | None = None) -> dict:
    """Write a labelled dataset as a rosbag2: image, CameraInfo and mono8 labels per frame, all three
    with the same header stamp (also the bag's log time), frames in (sequence, frame number) order,
    1/rate seconds apart. image_format: raw (rgb8 Image) or jpeg/png (CompressedImage on
    COMPRESSED_TOPIC). Returns a summary. `dataset` needs `len`, `[i] -> (rgb, mask)` and `.names`."""
    from rosbags.rosbag2 import Writer

    if rate <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate}")
    if image_format not in ("raw", "jpeg", "png"):
        raise ValueError(f"image format must be raw, jpeg or png, got {image_format!r}")
    ts = typestore()
    names = list(getattr(dataset, "names", None) or [f"{i:06d}" for i in range(len(dataset))])
    if len(names) != len(dataset):
        raise ValueError(f"dataset has {len(dataset)} items but {len(names)} names")
    order = sorted(range(len(names)), key=lambda i: frame_key(names[i]))
    if limit is not None:
        order = order[:limit]
    if not order:
        raise ValueError("the dataset is empty")
    period_ns = int(round(1e9 / rate))
    start_ns = int(round(start_s * 1e9))
    image_topic, image_type = ((IMAGE_TOPIC, "sensor_msgs/msg/Image") if image_format == "raw"
                               else (COMPRESSED_TOPIC, "sensor_msgs/msg/CompressedImage"))
    writer = Writer(Path(out), version=BAG_VERSION, storage_plugin=storage_plugin(storage))
    with writer:
        c_info = writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_gt = writer.add_connection(GT_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        c_img = writer.add_connection(image_topic, image_type, typestore=ts)
        frames = []
        for n, i in enumerate(order):
            rgb, mask = dataset[i]
            rgb, mask = np.asarray(rgb), np.asarray(mask)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
                raise ValueError(f"{names[i]}: expected H x W x 3 uint8 image and H x W mask, got "
                                 f"{rgb.dtype} {rgb.shape} and {mask.shape}")
            t = start_ns + n * period_ns
            header = _header(ts, t, CAMERA_FRAME)
            h, w = mask.shape
            info = _camera_info_msg(ts, w, h, hfov_deg, header)
            gt = _image_msg(ts, mask.astype(np.uint8), "mono8", header)
            img = (_image_msg(ts, rgb, "rgb8", header) if image_format == "raw"
                   else _compressed_msg(ts, rgb, image_format, jpeg_quality, header))
            # CameraInfo and labels before the image: a lock-step player publishes the whole
            # frame, and a live consumer has the frame's calibration when the image arrives.
            writer.write(c_info, t, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            writer.write(c_gt, t, ts.serialize_cdr(gt, "sensor_msgs/msg/Image"))
            writer.write(c_img, t, ts.serialize_cdr(img, image_type))
            frames.append(Path(names[i]).stem)
        writer.set_custom_data("msseg.frames", json.dumps(frames))
        writer.set_custom_data("msseg.rate_hz", repr(float(rate)))
        for key, value in (custom or {}).items():
            writer.set_custom_data(key, str(value))
    return {"bag": str(out), "frames": len(frames), "image_topic": image_topic, "storage": storage,
            "start_ns": start_ns, "period_ns": period_ns}


# -- reading -----------------------------------------------------------------------------------
@dataclass
class BagInfo:
    path: str
    topics: dict[str, tuple[str, int]]  # topic -> (type, count)
    start_ns: int
    end_ns: int
    custom: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"path": self.path, "start_ns": self.start_ns, "end_ns": self.end_ns,
                "duration_s": max(0, self.end_ns - self.start_ns) / 1e9,
                "topics": {t: {"type": ty, "count": c} for t, (ty, c) in sorted(self.topics.items())},
                "custom_data": self.custom}


def bag_info(path: str | os.PathLike) -> BagInfo:
    """What `ros2 bag info` shows, read through rosbags."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        topics: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            _, count = topics.get(c.topic, (c.msgtype, 0))
            topics[c.topic] = (c.msgtype, count + c.msgcount)
        custom = {}
        meta = getattr(reader, "metadata", None) or getattr(getattr(reader, "storage", None), "metadata", None)
        if meta is not None and getattr(meta, "custom", None):
            custom = dict(meta.custom)
        else:  # fall back to the YAML itself
            custom = _custom_data_from_yaml(Path(path))
        start, end = (reader.start_time, reader.end_time) if reader.message_count else (0, 0)
    return BagInfo(str(path), topics, start, end, custom)


def _custom_data_from_yaml(path: Path) -> dict[str, str]:
    try:
        from ruamel.yaml import YAML

        data = YAML(typ="safe").load((path / "metadata.yaml").read_text())
        return dict(data["rosbag2_bagfile_information"].get("custom_data") or {})
    except Exception:  # noqa: BLE001 - custom data is optional decoration
        return {}


def _pick_image_topic(topics: dict[str, tuple[str, int]], requested: str | None) -> str:
    if requested:
        if requested not in topics:
            raise ValueError(f"topic {requested} is not in the bag; topics: {sorted(topics)}")
        if topics[requested][0] not in IMAGE_TYPES:
            raise ValueError(f"{requested} is {topics[requested][0]}, not an Image or CompressedImage")
        return requested
    for preferred in (IMAGE_TOPIC, COMPRESSED_TOPIC):
        if preferred in topics and topics[preferred][0] in IMAGE_TYPES:
            return preferred
    candidates = [t for t, (ty, _) in topics.items() if ty in IMAGE_TYPES and t != GT_TOPIC]
    if len(candidates) != 1:
        raise ValueError(f"cannot choose the image topic among {sorted(candidates)}; pass --image-topic")
    return candidates[0]


# -- eval --------------------------------------------------------------------------------------
def evaluate_bag(bag: str | os.PathLike, segmenter: Any, image_topic: str | None = None, gt_topic: str = GT_TOPIC,
                 checkpoint: str = "", progress: Callable[[int], None] | None = None) -> dict:
    """Every image of the bag through `segmenter.predict`, scored against the label image with the
    same header stamp. Returns msseg-eval's report plus throughput_fps (images per second of
    decode + inference, after one warm-up frame), frames_without_gt and gt_without_frames."""
    from rosbags.rosbag2 import Reader

    from msseg_core.metrics import ConfusionMatrix
    from msseg_ros.image_codec import decode

    ts = typestore()
    info = bag_info(bag)
    image_topic = _pick_image_topic(info.topics, image_topic)
    if gt_topic not in info.topics:
        raise ValueError(f"ground-truth topic {gt_topic} is not in the bag; topics: {sorted(info.topics)}")
    cm = ConfusionMatrix(segmenter.num_classes)
    pending_pred: dict[int, np.ndarray] = {}
    pending_gt: dict[int, np.ndarray] = {}
    images, busy_s, warmed = 0, 0.0, False
    with Reader(Path(bag)) as reader:
        conns = [c for c in reader.connections if c.topic in (image_topic, gt_topic)]
        for conn, _, raw in reader.messages(connections=conns):
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            stamp = stamp_ns(msg.header.stamp)
            if conn.topic == gt_topic:
                gt = mono8_array(msg)
                pred = pending_pred.pop(stamp, None)
                if pred is None:
                    pending_gt[stamp] = gt
                else:
                    _score(cm, pred, gt, stamp)
                continue
            if not warmed:  # first call pays for allocator / cudnn set-up: keep it out of the timing
                segmenter.predict(decode(msg))
                warmed = True
            t0 = time.perf_counter()
            pred = segmenter.predict(decode(msg))
            busy_s += time.perf_counter() - t0
            images += 1
            if progress:
                progress(images)
            gt = pending_gt.pop(stamp, None)
            if gt is None:
                pending_pred[stamp] = pred
            else:
                _score(cm, pred, gt, stamp)
    report = cm.to_dict(segmenter.class_names)
    report.update({
        "checkpoint": checkpoint,
        "bag": str(bag),
        "image_topic": image_topic,
        "gt_topic": gt_topic,
        "images": images,
        "throughput_fps": images / busy_s if busy_s > 0 else 0.0,
        "frames_without_gt": len(pending_pred),
        "gt_without_frames": len(pending_gt),
    })
    return report


def _score(cm: Any, pred: np.ndarray, gt: np.ndarray, stamp: int) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"frame at {stamp} ns: prediction {pred.shape} and label {gt.shape} differ in size")
    cm.update(pred, gt)


# -- play --------------------------------------------------------------------------------------
@dataclass
class PlayStats:
    messages: int = 0
    frames: int = 0
    frames_answered: int = 0
    frames_lost: int = 0
    loops: int = 0
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
            self.image_topic: str | None = _pick_image_topic(image_candidates, image_topic)
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


# -- record ------------------------------------------------------------------------------------
def _record_qos(node: Any, topic: str):
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


# -- ROS process plumbing ----------------------------------------------------------------------
class _Ros:
    """rclpy context + executor thread for the CLI commands that talk to the graph."""

    def __init__(self, name: str, args: Sequence[str] | None = None):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from msseg_ros.qos import apply_fastdds_profile

        apply_fastdds_profile()  # large frames need the shared-memory profile; a user's choice wins
        self.context = rclpy.Context()
        # Our own SIGINT handling (a stop event) lets the recorder close its bag and the player stop
        # between messages; rclpy's handler would tear the context down under them.
        rclpy.init(args=list(args) if args is not None else None, context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the executor shutting down under spin()
            self.executor.spin()

    def add_node(self, node: Any) -> None:
        self.executor.add_node(node)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        if self.context.ok():
            self.context.shutdown()
        self._thread.join(timeout=2.0)


def _install_sigint(stop: threading.Event) -> None:
    import signal

    def handler(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def play_bag(bag: str, rate: float = 1.0, loop: bool = False, lockstep: bool = False,
             labels_topic: str = LABELS_TOPIC, timeout: float = 10.0, restamp: bool = False,
             topics: Sequence[str] | None = None, wait_subscribers: float = 10.0,
             image_topic: str | None = None, wait_for: Sequence[str] | None = None,
             stop: threading.Event | None = None) -> dict:
    """Play a bag into the graph from this process (see BagPlayer); returns the statistics.

    Before the first message, waits up to `wait_subscribers` seconds for a subscriber on each topic
    of `wait_for` (default: the image topic)."""
    stop = stop or threading.Event()
    ros = _Ros("msseg_bag_player")
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


def record_bag(out: str, topics: Sequence[str], duration: float | None = None, storage: str = "mcap",
               types: dict[str, str] | None = None, discovery_timeout: float = 10.0,
               stop: threading.Event | None = None) -> dict[str, int]:
    """Record topics until `duration` seconds have passed or `stop` is set; returns counts per topic."""
    stop = stop or threading.Event()
    ros = _Ros("msseg_bag_recorder")
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


def node_command(checkpoint: str = "", device: str = "cpu", namespace: str = "/msseg",
                 image_topic: str = IMAGE_TOPIC, info_topic: str = INFO_TOPIC,
                 extra_params: dict[str, Any] | None = None) -> list[str]:
    """The `segmentation_node` command line replay-eval (and the launch file) use."""
    exe = Path(sys.executable).with_name("segmentation_node")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "msseg_ros.segmentation_node"]
    cmd += ["--ros-args", "-r", f"__ns:={namespace}", "-r", f"image:={image_topic}",
            "-r", f"camera_info:={info_topic}", "-p", f"device:={device}"]
    if checkpoint:
        cmd += ["-p", f"checkpoint:={checkpoint}"]
    for key, value in (extra_params or {}).items():
        text = value if isinstance(value, str) else ("true" if value is True else "false" if value is False
                                                     else json.dumps(value))
        cmd += ["-p", f"{key}:={text}"]
    return cmd


def replay_eval(bag: str, checkpoint: str = "", device: str = "cpu", lockstep: bool = True, rate: float = 1.0,
                timeout: float = 10.0, first_timeout: float = 120.0, startup_timeout: float = 120.0,
                namespace: str = "/msseg", node_params: dict[str, Any] | None = None,
                match_timeout: float = 5.0, log: Callable[[str], None] = print,
                stop: threading.Event | None = None) -> dict:
    """Start the node as a subprocess, play the bag (restamped), score its labels live; the report
    is the evaluator's (mIoU schema + latency + frames lost) plus the player's statistics."""
    from msseg_ros.evaluator_node import EvaluatorNode

    stop = stop or threading.Event()
    info = bag_info(bag)
    image_topic = _pick_image_topic(info.topics, None)
    if info.topics[image_topic][0] != "sensor_msgs/msg/Image":
        raise ValueError(f"replay-eval feeds the node sensor_msgs/Image; {image_topic} is "
                         f"{info.topics[image_topic][0]}")
    if GT_TOPIC not in info.topics:
        raise ValueError(f"the bag has no ground truth on {GT_TOPIC}")
    ros = _Ros("msseg_bag_replay")
    proc = None
    evaluator = None
    try:
        labels_topic = f"{namespace.rstrip('/')}/labels"
        evaluator = EvaluatorNode(context=ros.context, checkpoint=checkpoint, match_timeout=match_timeout,
                                  cli_args=["--ros-args", "-r", f"labels:={labels_topic}",
                                            "-r", f"ground_truth/labels:={GT_TOPIC}"])
        ros.add_node(evaluator)
        player = BagPlayer(ros.node, bag, rate=rate, lockstep=lockstep, labels_topic=labels_topic, timeout=timeout,
                           first_timeout=first_timeout, restamp=True, image_topic=image_topic,
                           log=lambda m: ros.node.get_logger().warning(m))
        cmd = node_command(checkpoint, device, namespace, image_topic, INFO_TOPIC, node_params)
        log("starting: " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + startup_timeout
        ready = False
        while not ready and time.monotonic() < deadline and not stop.is_set():
            if proc.poll() is not None:
                raise RuntimeError(f"segmentation_node exited with code {proc.returncode} before it was ready")
            ready = player.wait_for_subscribers(1.0, topics=[image_topic], stop=stop, settle=0.0)
        if not ready:
            raise RuntimeError(f"segmentation_node did not subscribe to {image_topic} in {startup_timeout:.0f} s")
        # The evaluator's subscriptions are in this process; let both ends of every match settle.
        player.wait_for_subscribers(10.0, topics=[GT_TOPIC], stop=stop, settle=1.0)
        stats = player.run(stop)
        if lockstep:
            # The player saw each frame's labels through its own subscription; the evaluator's callback
            # for the same message (and the last ground truth) may still be queued on a busy machine.
            deadline = time.monotonic() + min(match_timeout, 10.0)
            while evaluator.matcher.frames_done() < stats.frames_answered and time.monotonic() < deadline:
                time.sleep(0.02)
        else:  # let the last frames through the node
            time.sleep(min(match_timeout, 10.0))
        report = evaluator.finish()
        report["player"] = stats.to_dict()
        report["bag"] = str(bag)
        return report
    finally:
        if proc is not None and proc.poll() is None:
            import signal

            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if evaluator is not None:
            ros.executor.remove_node(evaluator)
            evaluator.destroy_node()
        ros.close()


# -- CLI ---------------------------------------------------------------------------------------
def _write_json(report: dict, path: str | None) -> None:
    text = json.dumps(report, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    print(text)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("make", help="write a labelled dataset split as a rosbag2")
    m.add_argument("--dataset", default="camvid")
    m.add_argument("--data-root", required=True)
    m.add_argument("--split", default="test")
    m.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    m.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    m.add_argument("--rate", type=float, default=1.0,
                   help="frames per second of the header stamps (CamVid's labelled frames are 1 Hz)")
    m.add_argument("--start", type=float, default=DEFAULT_START_S, help="first stamp, seconds since the epoch")
    m.add_argument("--image-format", choices=("raw", "jpeg", "png"), default="raw",
                   help=f"raw: rgb8 Image on {IMAGE_TOPIC}; jpeg/png: CompressedImage on {COMPRESSED_TOPIC}")
    m.add_argument("--jpeg-quality", type=int, default=95)
    m.add_argument("--hfov", type=float, default=CAMVID_HFOV_DEG,
                   help="horizontal field of view for CameraInfo's K [deg] (CamVid has no calibration)")
    m.add_argument("--limit", type=int, default=None, help="only the first N frames")

    e = sub.add_parser("eval", help="score a segmentation checkpoint on a bag's images and labels, offline")
    e.add_argument("--bag", required=True)
    e.add_argument("--checkpoint", default="", help="default: the packaged CamVid model")
    e.add_argument("--image-topic", default=None, help=f"default: {IMAGE_TOPIC} or {COMPRESSED_TOPIC}")
    e.add_argument("--gt-topic", default=GT_TOPIC)
    e.add_argument("--json", default=None, help="also write the report here")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    e.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="inference backend (as msseg-eval's and the node's)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: the usable cores)")

    pl = sub.add_parser("play", help="publish a bag into the ROS graph")
    pl.add_argument("bag")
    pl.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    pl.add_argument("--loop", action="store_true")
    pl.add_argument("--lockstep", action="store_true",
                    help="after each image wait for the node's labels with its stamp (or --timeout)")
    pl.add_argument("--labels-topic", default=LABELS_TOPIC)
    pl.add_argument("--image-topic", default=None)
    pl.add_argument("--timeout", type=float, default=10.0, help="lock-step wait per frame [s]; then it counts as lost")
    pl.add_argument("--restamp", action="store_true", help="header stamps = publication time (for live latency)")
    pl.add_argument("--topics", nargs="+", default=None, help="only these topics")
    pl.add_argument("--wait-subscribers", type=float, default=10.0,
                    help="wait up to this long for subscribers before starting [s]")
    pl.add_argument("--wait-for", action="append", default=None, metavar="TOPIC",
                    help="topics that need a subscriber before playing (repeatable; default: the image topic)")

    r = sub.add_parser("record", help="record topics to a rosbag2")
    r.add_argument("bag")
    r.add_argument("topics", nargs="+",
                   help="topic names; TOPIC:=TYPE (e.g. /x:=sensor_msgs/msg/Image) skips discovery")
    r.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    r.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    r.add_argument("--discovery-timeout", type=float, default=10.0)

    re_ = sub.add_parser("replay-eval", help="node + player + live evaluator from one command")
    re_.add_argument("--bag", required=True)
    re_.add_argument("--checkpoint", default="")
    re_.add_argument("--device", default="cpu")
    re_.add_argument("--lockstep", action="store_true", help="one frame at a time (exact, no frame dropped)")
    re_.add_argument("--rate", type=float, default=1.0)
    re_.add_argument("--timeout", type=float, default=10.0)
    re_.add_argument("--backend", default="", help="node parameter backend ('' = the node's default)")
    re_.add_argument("--threads", type=int, default=0, help="node parameter threads (0 = the node's default)")
    re_.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                     help="any other node parameter, e.g. --param precision:=bf16 (repeatable)")
    re_.add_argument("--json", default=None)

    i = sub.add_parser("info", help="topics, types, counts and time range of a bag")
    i.add_argument("bag")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `msseg-bag`; exit status 2 with one error line on bad input."""
    from rosbags.rosbag2 import ReaderError, WriterError

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ros-args" in argv:  # started by a launch file as if it were a node: ROS arguments are not ours
        argv = argv[:argv.index("--ros-args")]
    args = _parse_args(argv)
    try:
        if args.command == "make":
            from msseg_core.data import build_dataset

            if Path(args.out).exists():
                raise ValueError(f"{args.out} exists already; a bag is never overwritten")
            dataset = build_dataset(args.dataset, args.data_root, args.split)
            summary = make_bag(dataset, args.out, storage=args.storage, rate=args.rate, start_s=args.start,
                               image_format=args.image_format, jpeg_quality=args.jpeg_quality, hfov_deg=args.hfov,
                               limit=args.limit, custom={"msseg.dataset": args.dataset, "msseg.split": args.split})
            print(json.dumps(summary, indent=2))
        elif args.command == "eval":
            from msseg_core.checkpoint import default_checkpoint
            from msseg_core.inference import Segmenter

            bag_info(args.bag)  # a bad bag path fails before the model loads
            ckpt = args.checkpoint or str(default_checkpoint())
            segmenter = Segmenter.from_checkpoint(ckpt, device=args.device, precision=args.precision,
                                                  backend=args.backend, threads=args.threads)
            report = evaluate_bag(args.bag, segmenter, args.image_topic, args.gt_topic, checkpoint=ckpt)
            _write_json(report, args.json)
        elif args.command == "play":
            stop = threading.Event()
            _install_sigint(stop)
            stats = play_bag(args.bag, rate=args.rate, loop=args.loop, lockstep=args.lockstep,
                             labels_topic=args.labels_topic, timeout=args.timeout, restamp=args.restamp,
                             topics=args.topics, wait_subscribers=args.wait_subscribers,
                             image_topic=args.image_topic, wait_for=args.wait_for, stop=stop)
            print(json.dumps(stats, indent=2))
            return 1 if stats["frames_lost"] else 0
        elif args.command == "record":
            stop = threading.Event()
            _install_sigint(stop)
            topics, types = [], {}
            for spec in args.topics:
                topic, _, msgtype = spec.partition(":=")
                topics.append(topic)
                if msgtype:
                    types[topic] = msgtype
            counts = record_bag(args.bag, topics, duration=args.duration, storage=args.storage, types=types,
                                discovery_timeout=args.discovery_timeout, stop=stop)
            print(json.dumps({"bag": args.bag, "counts": counts}, indent=2))
        elif args.command == "replay-eval":
            stop = threading.Event()
            _install_sigint(stop)
            params: dict[str, Any] = {}
            if args.backend:
                params["backend"] = args.backend
            if args.threads:
                params["threads"] = args.threads
            for spec in args.param:
                name, sep, value = spec.partition(":=")
                if not sep:
                    raise ValueError(f"--param wants NAME:=VALUE, got {spec!r}")
                params[name] = value
            report = replay_eval(args.bag, checkpoint=args.checkpoint, device=args.device, lockstep=args.lockstep,
                                 rate=args.rate, timeout=args.timeout, node_params=params,
                                 log=lambda m: print(m, file=sys.stderr), stop=stop)
            _write_json(report, args.json)
            return 1 if report.get("frames_lost") else 0
        elif args.command == "info":
            print(json.dumps(bag_info(args.bag).to_dict(), indent=2))
    except (ValueError, RuntimeError, OSError, ReaderError, WriterError) as exc:
        print(f"msseg-bag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
