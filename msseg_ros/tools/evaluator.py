"""Live evaluation of a running segmentation node against replayed ground truth.

Subscribes to `labels` (the node's output) and `ground_truth/labels` (mono8 ids, 255 = void, e.g.
from `msseg-bag play`), both relative names, so remap them: for the default layout,
`-r labels:=/msseg/labels -r ground_truth/labels:=/ground_truth/labels`. Messages are matched by
header stamp; a ground-truth frame with no labels within `match_timeout` seconds is counted lost.
Ground truth is subscribed only once a labels publisher is matched, so a player that waits for a
ground-truth subscriber (as `msseg-bag play --wait-for` and the replay launch file do) starts only
when the labels of its first frame can reach this node.

Latency is the receive time of the labels (this node's clock) minus their header stamp, which the
node copies from the input image. With a live camera that is capture-to-labels latency; when a bag
is replayed, play it with `--restamp` (replay-eval does) so the stamps are the publication times
and the number is publish-to-labels latency. Without restamping the stamps are from the recording
day: latencies over `max_latency` are counted as `stale_stamps` and left out of the percentiles.

The report (logged every `report_period` seconds, written to `report_path` periodically and on
shutdown) has msseg-eval's schema (miou, mean_acc, pixel_acc, per_class_iou, per_class_acc,
confusion_matrix, num_images, checkpoint) plus latency_ms, frames_lost and the match counters.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image

from msseg_core.classes import get_class_set
from msseg_core.evaluation.metrics import ConfusionMatrix
from msseg_core.io import write_json_atomic
from msseg_ros.transport import topics
from msseg_ros.transport.messages import mono8_array, stamp_ns

NODE_NAME = "msseg_evaluator"


class StampMatcher:
    """Pairs predictions and ground truth by stamp into a ConfusionMatrix (no ROS in it).

    `now` arguments are seconds on any monotonic clock; a ground-truth frame unmatched for
    `match_timeout` is lost, a prediction unmatched for that long had no ground truth."""

    def __init__(self, class_names: list[str], match_timeout: float = 5.0, max_latency: float = 60.0):
        self.class_names = list(class_names)
        self.cm = ConfusionMatrix(len(self.class_names))
        self.match_timeout = float(match_timeout)
        self.max_latency = float(max_latency)
        self._gt: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()
        self._pred: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()
        self._matched: OrderedDict[int, None] = OrderedDict()
        self.latencies_ms: list[float] = []
        self.stale_stamps = 0
        self.frames_lost = 0
        self.labels_without_gt = 0
        self.duplicates = 0
        self.size_mismatches = 0
        self.gt_received = 0
        self.labels_received = 0
        self._lock = threading.Lock()

    def add_gt(self, stamp: int, gt: np.ndarray, now: float) -> None:
        with self._lock:
            self.gt_received += 1
            if stamp in self._matched or stamp in self._gt:
                self.duplicates += 1
                return
            pred = self._pred.pop(stamp, None)
            if pred is None:
                self._gt[stamp] = (gt, now)
            else:
                self._score(stamp, pred[0], gt)

    def add_labels(self, stamp: int, labels: np.ndarray, now: float, latency_s: float | None = None) -> None:
        with self._lock:
            self.labels_received += 1
            if latency_s is not None:
                if -1.0 <= latency_s <= self.max_latency:
                    self.latencies_ms.append(latency_s * 1000.0)
                else:
                    self.stale_stamps += 1
            if stamp in self._matched or stamp in self._pred:
                self.duplicates += 1
                return
            gt = self._gt.pop(stamp, None)
            if gt is None:
                self._pred[stamp] = (labels, now)
            else:
                self._score(stamp, labels, gt[0])

    def _score(self, stamp: int, labels: np.ndarray, gt: np.ndarray) -> None:
        self._matched[stamp] = None
        while len(self._matched) > 100_000:
            self._matched.popitem(last=False)
        if labels.shape != gt.shape:
            self.size_mismatches += 1
            return
        self.cm.update(labels, gt)

    def expire(self, now: float) -> None:
        """Give up on entries older than match_timeout."""
        with self._lock:
            for pending, is_gt in ((self._gt, True), (self._pred, False)):
                for stamp in [s for s, (_, t) in pending.items() if now - t > self.match_timeout]:
                    del pending[stamp]
                    if is_gt:
                        self.frames_lost += 1
                    else:
                        self.labels_without_gt += 1

    def frames_done(self) -> int:
        """Ground-truth frames settled so far: matched with labels (scored, or sizes mismatched) or lost."""
        with self._lock:
            return self.cm.num_images + self.size_mismatches + self.frames_lost

    def finish(self) -> None:
        """End of the run: everything still pending is unmatched."""
        self.expire(float("inf"))

    def report(self, checkpoint: str = "") -> dict:
        with self._lock:
            out = self.cm.to_dict(self.class_names)
            lat = np.asarray(self.latencies_ms, dtype=np.float64)
            out.update({
                "checkpoint": checkpoint,
                "frames_matched": self.cm.num_images,
                "frames_lost": self.frames_lost,
                "frames_pending": len(self._gt),
                "gt_received": self.gt_received,
                "labels_received": self.labels_received,
                "labels_without_gt": self.labels_without_gt,
                "duplicates": self.duplicates,
                "size_mismatches": self.size_mismatches,
                "stale_stamps": self.stale_stamps,
                "latency_ms": None if lat.size == 0 else {
                    "count": int(lat.size), "mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                    "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99)),
                    "max": float(lat.max())},
            })
            return out


def _class_names(checkpoint: str, dataset: str) -> tuple[list[str], str]:
    """Class names from the checkpoint's metadata (default: the packaged model), else the dataset's."""
    from msseg_core.checkpoint import CheckpointError, read_meta

    try:
        path, meta = read_meta(checkpoint)  # a zoo name, a path, '' for the default, as the node takes it
        return list(meta.class_names), str(path)
    except CheckpointError:
        if checkpoint:
            raise
        return list(get_class_set(dataset).names), ""


class EvaluatorNode(Node):
    """Matches `labels` with `ground_truth/labels` by stamp; see the module docstring."""

    def __init__(self, checkpoint: str | None = None, match_timeout: float | None = None, **kwargs: Any):
        overrides = []
        if checkpoint is not None:
            overrides.append(Parameter("checkpoint", value=checkpoint))
        if match_timeout is not None:
            overrides.append(Parameter("match_timeout", value=float(match_timeout)))
        super().__init__(NODE_NAME, parameter_overrides=overrides, **kwargs)

        def declare(name: str, default: Any, text: str) -> Any:
            return self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value

        ckpt = declare("checkpoint", "", "checkpoint whose class names the label ids mean ('' = packaged model)")
        dataset = declare("dataset", "camvid", "class set used when no checkpoint is available")
        self.report_path = declare("report_path", "", "JSON report written periodically and on shutdown")
        period = float(declare("report_period", 10.0, "seconds between log lines / report writes"))
        timeout = float(declare("match_timeout", 5.0, "seconds to wait for the other half of a pair"))
        max_latency = float(declare("max_latency", 60.0, "latencies above this [s] are stale stamps"))
        names, self.checkpoint = _class_names(ckpt, dataset)
        self.matcher = StampMatcher(names, match_timeout=timeout, max_latency=max_latency)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        opts = QoSOverridingOptions.with_default_policies
        self.labels_sub = self.create_subscription(Image, topics.LABELS, self.labels_callback, qos,
                                                   qos_overriding_options=opts())
        # Ground truth is subscribed only once the labels subscription is matched to a publisher (the
        # node): a player that waits for a ground-truth subscriber (msseg-bag play --wait-for, the
        # launch files) then starts only when labels can reach this node too. Otherwise, on a slow
        # machine, the first frames' labels could go out before the node and this node had matched.
        self.gt_sub = None
        self._gt_args = (Image, topics.GROUND_TRUTH, self.gt_callback, qos)
        self._gt_opts = opts
        self._gt_timer = self.create_timer(0.05, self.gt_subscribe_callback)
        self.timer = self.create_timer(min(1.0, timeout / 2), self.expire_callback)
        self.report_timer = self.create_timer(period, self.report_callback)
        self.get_logger().info(f"matching {self.labels_sub.topic_name} with "
                               f"{self.resolve_topic_name(topics.GROUND_TRUTH)} by stamp; {len(names)} classes; "
                               f"ground truth is subscribed once a labels publisher is matched")

    def gt_subscribe_callback(self) -> None:
        """Timer: subscribe ground truth as soon as a labels publisher is matched (see __init__)."""
        if self.gt_sub is not None or self.labels_sub.get_publisher_count() == 0:
            return
        self._gt_timer.cancel()
        self.gt_sub = self.create_subscription(*self._gt_args, qos_overriding_options=self._gt_opts())
        self.get_logger().info(f"labels publisher matched; subscribed to {self.gt_sub.topic_name}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def labels_callback(self, msg: Image) -> None:
        now_ns = self.get_clock().now().nanoseconds
        stamp = stamp_ns(msg.header.stamp)
        try:
            labels = mono8_array(msg)
        except ValueError as exc:
            self.get_logger().warning(f"labels ignored: {exc}", throttle_duration_sec=5.0)
            return
        self.matcher.add_labels(stamp, labels, now_ns / 1e9, (now_ns - stamp) / 1e9)

    def gt_callback(self, msg: Image) -> None:
        try:
            gt = mono8_array(msg)
        except ValueError as exc:
            self.get_logger().warning(f"ground truth ignored: {exc}", throttle_duration_sec=5.0)
            return
        self.matcher.add_gt(stamp_ns(msg.header.stamp), gt, self._now())

    def expire_callback(self) -> None:
        self.matcher.expire(self._now())

    def report_callback(self) -> None:
        r = self.matcher.report(self.checkpoint)
        lat = r["latency_ms"]
        self.get_logger().info(
            f"{r['frames_matched']} frames matched, mIoU {100 * r['miou']:.2f}%, lost {r['frames_lost']}, "
            + (f"latency p50 {lat['p50']:.1f} ms p90 {lat['p90']:.1f} ms" if lat else "no latency yet"))
        if self.report_path:
            write_json_atomic(self.report_path, r)  # a reader never sees half a report

    def finish(self) -> dict:
        """End of the run: count what is still unmatched, write and return the final report."""
        self.matcher.finish()
        r = self.matcher.report(self.checkpoint)
        if self.report_path:
            write_json_atomic(self.report_path, r)  # a reader never sees half a report
        return r


def main(args: list[str] | None = None) -> int:
    """Console script `evaluator_node`: runs until Ctrl-C, then writes the final report."""
    from msseg_ros.transport.graph import run_node
    from msseg_ros.transport.qos import apply_fastdds_profile

    def print_final_report(node: EvaluatorNode) -> None:
        report = node.finish()
        print(json.dumps({k: v for k, v in report.items() if k != "confusion_matrix"}, indent=2))

    apply_fastdds_profile()
    return run_node(NODE_NAME, EvaluatorNode, args, on_exit=print_final_report)


if __name__ == "__main__":
    sys.exit(main())
