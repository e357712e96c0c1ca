"""`msseg-bag make`: a labelled dataset split as a rosbag2: camera image, CameraInfo and mono8
ground-truth labels per frame, all three with one header stamp, frames in sequence order."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from msseg_core.ground.camera import PinholeCamera
from msseg_ros.bag.info import BAG_VERSION, storage_plugin
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import typestore

DEFAULT_START_S = 1_700_000_000.0
"""First header stamp of a made bag (seconds since the epoch): any fixed, non-zero time works."""

CAMVID_HFOV_DEG = 60.0
"""CamVid publishes no intrinsics; its 960x720 frames come from a camcorder behind the windscreen.
A 60 degree horizontal field of view (fx = fy = 831.4 px at 960 px width, principal point at the
image centre, no distortion) is a plausible stand-in, enough for the road grid's geometry."""

_FRAME_RE = re.compile(r"^(?P<seq>.+?)_f?(?P<frame>\d+)$")


def frame_key(name: str) -> tuple[str, int, str]:
    """Sort key from a CamVid name: '0001TP_006690.png' -> ('0001TP', 6690), 'Seq05VD_f00930' -> ('Seq05VD', 930).

    Names without a trailing frame number sort by name after those with one of the same prefix."""
    stem = Path(name).stem
    m = _FRAME_RE.match(stem)
    if m:
        return m.group("seq"), int(m.group("frame")), stem
    return stem, -1, stem


# rosbags messages (the typestore's classes, not rclpy's) --------------------------------------
def _header(ts: Any, ns: int, frame_id: str) -> Any:
    stamp = ts.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    return ts.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def _image_msg(ts: Any, array: np.ndarray, encoding: str, header: Any) -> Any:
    channels = 1 if array.ndim == 2 else array.shape[2]
    return ts.types["sensor_msgs/msg/Image"](
        header=header, height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=0,
        step=array.shape[1] * channels, data=np.ascontiguousarray(array, dtype=np.uint8).reshape(-1))


def _compressed_msg(ts: Any, rgb: np.ndarray, fmt: str, quality: int, header: Any) -> Any:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} frame as {fmt}")
    return ts.types["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=buf.reshape(-1))


def _camera_info_msg(ts: Any, camera: PinholeCamera, header: Any) -> Any:
    fields = {k: np.asarray(v, dtype=np.float64) if isinstance(v, list) else v
              for k, v in camera.camera_info_fields().items()}
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types["sensor_msgs/msg/CameraInfo"](header=header, binning_x=0, binning_y=0, roi=roi, **fields)


def make_bag(dataset: Any, out: str | os.PathLike, storage: str = "mcap", rate: float = 1.0,
             start_s: float = DEFAULT_START_S, image_format: str = "raw", jpeg_quality: int = 95,
             hfov_deg: float = CAMVID_HFOV_DEG, limit: int | None = None,
             custom: dict[str, str] | None = None) -> dict:
    """Write a labelled dataset as a rosbag2: image, CameraInfo and mono8 labels per frame, all three
    with the same header stamp (also the bag's log time), frames in (sequence, frame number) order,
    1/rate seconds apart. image_format: raw (rgb8 Image) or jpeg/png (CompressedImage on
    topics.CAMERA_COMPRESSED_IMAGE). Returns a summary. `dataset` needs `len`, `[i] -> (rgb, mask)` and `.names`."""
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
    image_topic, image_type = ((topics.CAMERA_IMAGE, "sensor_msgs/msg/Image") if image_format == "raw"
                               else (topics.CAMERA_COMPRESSED_IMAGE, "sensor_msgs/msg/CompressedImage"))
    writer = Writer(Path(out), version=BAG_VERSION, storage_plugin=storage_plugin(storage))
    cameras: dict[tuple[int, int], PinholeCamera] = {}
    with writer:
        c_info = writer.add_connection(topics.CAMERA_CAMERA_INFO, "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_gt = writer.add_connection(topics.GROUND_TRUTH_LABELS, "sensor_msgs/msg/Image", typestore=ts)
        c_img = writer.add_connection(image_topic, image_type, typestore=ts)
        frames = []
        for n, i in enumerate(order):
            rgb, mask = dataset[i]
            rgb, mask = np.asarray(rgb), np.asarray(mask)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
                raise ValueError(f"{names[i]}: expected H x W x 3 uint8 image and H x W mask, got "
                                 f"{rgb.dtype} {rgb.shape} and {mask.shape}")
            t = start_ns + n * period_ns
            header = _header(ts, t, topics.CAMERA_FRAME)
            h, w = mask.shape
            if (h, w) not in cameras:
                cameras[h, w] = PinholeCamera.from_hfov(w, h, hfov_deg)
            info = _camera_info_msg(ts, cameras[h, w], header)
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
