"""`msseg-bag frames`: frames to label from a recorded bag, in the folder-dataset layout (msseg_core.data.folder).

    msseg-bag frames drive.mcap_dir --out data/drive --every 1.0 [--min-change 3] [--prelabel camvid]

Reads one image topic (sensor_msgs/Image in every encoding the node takes, or CompressedImage JPEG/PNG),
takes a frame every `every_s` seconds of header stamp (or every `every_frames` messages), skips a candidate
that looks like the last frame written (mean absolute difference of 32x24 grey thumbnails below
`min_change` grey levels: the robot stood still), and writes

    OUT/images/<bag>_<n>.png     n = the message's index on the topic (stable whatever the spacing)
    OUT/labels/<bag>_<n>.png     with a pre-label model: its class ids, for a labeller to correct
    OUT/classes.yaml             with a pre-label model, when absent: that model's class table
    OUT/manifest.csv             file, bag, topic, stamp_ns, index: where each frame came from

Every file is written atomically; the manifest last, so a folder with a manifest is complete. A frame that
cannot be decoded is counted and skipped. One process per bag (a folder of bags: one process each).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from msseg_core.io import write_bytes_atomic, write_text_atomic
from msseg_ros.bag.info import bag_info, pick_image_topic
from msseg_ros.transport.cdr import cdr_stamp, typestore
from msseg_ros.transport.image_codec import ImageDecodeError, decode

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = ("file", "bag", "topic", "stamp_ns", "index")
THUMB_SIZE = (32, 24)  # (width, height) of the near-duplicate thumbnail
DEFAULT_EVERY_S = 1.0
DEFAULT_MIN_CHANGE = 3.0


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A 32x24 grey thumbnail (area-averaged, float32): sensor noise averages out, scene changes do not."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, in grey levels (0..255)."""
    return float(np.abs(a - b).mean())


def _encode(image: np.ndarray, suffix: str, path: Path) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix == ".jpg" else []
    ok, buf = cv2.imencode(suffix, image, params)
    if not ok:
        raise ValueError(f"cannot encode {path}")
    return buf.tobytes()


def extract_frames(bag: str | os.PathLike, out: str | os.PathLike, image_topic: str | None = None,
                   every_s: float | None = None, every_frames: int | None = None,
                   min_change: float = DEFAULT_MIN_CHANGE, segmenter: Any = None, image_format: str = "png",
                   limit: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Write frames of `bag` to `out` (layout in the module docstring); returns a summary.

    every_s / every_frames: the spacing of candidates (default every_s = 1 s; at most one of them); a
    candidate is skipped when it differs from the last frame written by less than `min_change` (0: never).
    segmenter: a `Segmenter` whose `predict` gives the pre-labels (None: no labels written)."""
    from rosbags.rosbag2 import Reader

    if every_s is not None and every_frames is not None:
        raise ValueError("give --every or --every-frames, not both")
    if every_s is None and every_frames is None:
        every_s = DEFAULT_EVERY_S
    if every_s is not None and every_s < 0:
        raise ValueError(f"--every must be >= 0 seconds, got {every_s}")
    if every_frames is not None and every_frames < 1:
        raise ValueError(f"--every-frames must be >= 1, got {every_frames}")
    if min_change < 0:
        raise ValueError(f"--min-change must be >= 0, got {min_change}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image format must be png or jpg, got {image_format!r}")
    bag, out = Path(bag), Path(out)
    info = bag_info(bag)  # a bad bag fails here, before anything is written
    topic = pick_image_topic(info.topics, image_topic)
    if (out / MANIFEST).exists():
        raise ValueError(f"{out} already holds frames ({MANIFEST}); choose another --out")
    name = bag.resolve().name.removesuffix(".mcap").removesuffix(".db3")
    ts = typestore()
    rows: list[dict] = []
    counts = {"messages": 0, "candidates": 0, "written": 0, "similar": 0, "invalid": 0}
    last_stamp: int | None = None
    last_thumb: np.ndarray | None = None
    period_ns = None if every_s is None else int(round(every_s * 1e9))
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for index, (conn, log_ns, raw) in enumerate(reader.messages(connections=conns)):
            counts["messages"] += 1
            try:
                stamp = cdr_stamp(raw) or log_ns  # a camera without stamps: the recording time
            except Exception:  # noqa: BLE001 - too short to hold a header: count it as invalid below
                stamp = log_ns
            if period_ns is not None:
                if last_stamp is not None and stamp - last_stamp < period_ns:
                    continue
            elif index % every_frames:
                continue
            last_stamp = stamp
            counts["candidates"] += 1
            try:
                rgb = decode(ts.deserialize_cdr(raw, conn.msgtype))
            except (ImageDecodeError, ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
                counts["invalid"] += 1
                if log:
                    log(f"{topic} message {index} at {stamp} ns: skipped, cannot decode: {exc}")
                continue
            thumb = thumbnail(rgb)
            if last_thumb is not None and min_change > 0 and change(thumb, last_thumb) < min_change:
                counts["similar"] += 1
                continue
            last_thumb = thumb
            stem = f"{name}_{index:06d}"
            file = f"{stem}.{image_format}"
            write_bytes_atomic(out / "images" / file,
                               _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), f".{image_format}", out / file))
            if segmenter is not None:
                ids = np.ascontiguousarray(segmenter.predict(rgb), dtype=np.uint8)
                write_bytes_atomic(out / "labels" / f"{stem}.png", _encode(ids, ".png", out / f"{stem}.png"))
            rows.append({"file": f"images/{file}", "bag": str(bag), "topic": topic, "stamp_ns": stamp,
                         "index": index})
            counts["written"] += 1
            if limit is not None and counts["written"] >= limit:
                break
    if not rows:
        raise ValueError(f"no frame written from {topic} of {bag} ({counts})")
    wrote_classes = False
    if segmenter is not None and not (out / "classes.yaml").exists():
        from msseg_core.classes import ClassSet
        from msseg_core.data.folder import write_class_table

        palette = tuple(tuple(int(v) for v in c) for c in segmenter.palette)
        write_class_table(out, ClassSet(name, tuple(segmenter.class_names), palette,
                                        tuple(segmenter.road_classes)))
        wrote_classes = True
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / MANIFEST, text.getvalue(), durable=True)
    return {"bag": str(bag), "topic": topic, "out": str(out), **counts,
            "prelabels": segmenter is not None, "classes_yaml": wrote_classes, "manifest": str(out / MANIFEST)}


def read_manifest(out: str | os.PathLike) -> list[dict]:
    """The rows of a frames folder's manifest.csv (stamp_ns and index as ints)."""
    with open(Path(out) / MANIFEST, newline="") as fh:
        return [{**row, "stamp_ns": int(row["stamp_ns"]), "index": int(row["index"])} for row in csv.DictReader(fh)]
