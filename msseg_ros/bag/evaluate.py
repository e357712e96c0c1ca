"""`msseg-bag eval`: every image of a bag through `Segmenter.predict`, offline, scored against the
label image with the same stamp; the report has msseg-eval's schema plus throughput."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from msseg_ros.bag.info import bag_info, pick_image_topic
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import typestore
from msseg_ros.transport.messages import mono8_array, stamp_ns


def evaluate_bag(bag: str | os.PathLike, segmenter: Any, image_topic: str | None = None,
                 gt_topic: str = topics.GROUND_TRUTH_LABELS, checkpoint: str = "",
                 progress: Callable[[int], None] | None = None) -> dict:
    """Every image of the bag through `segmenter.predict`, scored against the label image with the
    same header stamp. Returns msseg-eval's report plus throughput_fps (images per second of
    decode + inference, after one warm-up frame), frames_without_gt and gt_without_frames."""
    from rosbags.rosbag2 import Reader

    from msseg_core.evaluation.metrics import ConfusionMatrix
    from msseg_ros.transport.image_codec import decode

    ts = typestore()
    info = bag_info(bag)
    image_topic = pick_image_topic(info.topics, image_topic)
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
