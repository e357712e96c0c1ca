"""Frames for the camera node and the demo, from whatever the user has: the built-in synthetic
street, a folder of images (with labels when a sibling annotation folder exists), a video file, or a
rosbag2 / rosbag1 recording (sensor_msgs/Image or CompressedImage).

One spec string picks the source, so ``synthetic_camera --ros-args -p source:=PATH`` and
``msseg-demo --input PATH`` replay real data exactly like the built-in camera:

* ``''``, ``'synthetic'`` or ``'synthetic:SEED'``: the renderer of `msseg_core.synthetic` (exact labels);
* a folder with ``metadata.yaml``, or a ``.mcap`` / ``.db3`` / ``.bag`` file: a recording;
* any other folder: its images in sorted order; labels from ``<folder>annot`` (CamVid's layout),
  ``<folder>_annot``, ``<folder>_labels`` or ``<folder>labels`` beside it, matched by file stem;
* an image file: that one frame; any other file: a video (OpenCV).

Every source yields `Frame`s: RGB uint8, optional CamVid-id labels (void = 255), and the source's own
time where it has one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from msseg_core.ground.camera import CameraError, PinholeCamera
from msseg_ros.transport.messages import IMAGE_TYPES

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")
BAG_EXTS = (".mcap", ".db3", ".bag")
LABEL_DIR_SUFFIXES = ("annot", "_annot", "_labels", "labels", "_label")
# Topics of a recording that hold images but not camera frames (e.g. msseg's own outputs).
_NOT_CAMERA = ("label", "mask", "overlay", "confidence", "ground_truth", "depth", "segment")
VOID = 255


@dataclass
class Frame:
    """One input frame."""

    rgb: np.ndarray  # H x W x 3 uint8
    labels: np.ndarray | None  # H x W uint8 class ids (255 = void), when the source has ground truth
    index: int
    name: str  # file name, topic, or 'synthetic'
    stamp_ns: int | None = None  # the source's own time (recording header stamp, video position)


class FrameSource:
    """Base: iterate frames; `camera` is the calibration (at the native size) where the source knows it."""

    kind = "source"
    has_labels = False
    camera: PinholeCamera | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def close(self) -> None:
        """Release files or decoders."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _resize(frame: Frame, size: tuple[int, int] | None) -> Frame:
    """Resize to (width, height): area/linear for images, nearest for labels (ids never blend)."""
    if size is None or (frame.rgb.shape[1], frame.rgb.shape[0]) == tuple(size):
        return frame
    w, h = size
    shrink = w < frame.rgb.shape[1]
    frame.rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if frame.labels is not None:
        frame.labels = cv2.resize(frame.labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return frame


class SyntheticSource(FrameSource):
    """The built-in street: endless, deterministic, exact labels and intrinsics."""

    kind = "synthetic"
    has_labels = True

    def __init__(self, seed: int = 0, width: int = 480, height: int = 360, fps: float = 10.0,
                 hfov_deg: float | None = None, speed: float = 8.0):
        from msseg_core.synthetic import DEFAULT_HFOV_DEG, SceneSequence

        self.sequence = SceneSequence(seed, width, height, fps=fps, speed=speed,
                                      hfov_deg=DEFAULT_HFOV_DEG if hfov_deg is None else hfov_deg)
        self.camera = self.sequence.camera

    def __iter__(self) -> Iterator[Frame]:
        for f in self.sequence:
            yield Frame(f.rgb, f.labels, f.index, "synthetic", None)

    def describe(self) -> str:
        c = self.sequence.camera
        return f"synthetic street (seed {self.sequence.seed}, {c.width}x{c.height})"


def _read_labels(path: Path, palette: np.ndarray | None = None) -> np.ndarray:
    """A label image: single-channel ids (anything >= the class count of CamVid (11) is void), or a
    colour-coded PNG mapped back through the palette (unknown colours = void)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read label image {path}")
    if raw.ndim == 3 and raw.shape[2] >= 3:
        if (raw[..., 0] == raw[..., 1]).all() and (raw[..., 1] == raw[..., 2]).all():
            raw = raw[..., 0]
        else:
            from msseg_core.classes import CAMVID

            pal = np.asarray(CAMVID.palette if palette is None else palette, np.int64)
            rgb = cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB).astype(np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            out = np.full(code.shape, VOID, np.uint8)
            for i, c in enumerate(pal):
                out[code == (c[0] << 16 | c[1] << 8 | c[2])] = i
            return out
    if raw.ndim == 3:
        raw = raw[..., 0]
    ids = raw.astype(np.int64)
    return np.where(ids >= 11, VOID, ids).astype(np.uint8)


def find_label_dir(image_dir: Path) -> Path | None:
    """The annotation folder beside an image folder (CamVid: train/ -> trainannot/), if any."""
    image_dir = Path(image_dir)
    for suffix in LABEL_DIR_SUFFIXES:
        cand = image_dir.parent / f"{image_dir.name}{suffix}"
        if cand.is_dir():
            return cand
    return None


class FolderSource(FrameSource):
    """Sorted images of a folder; labels matched by stem from the sibling annotation folder.

    A CamVid split (``test/`` + ``testannot/`` index labels, or ``test/`` + ``test_labels/`` colour
    labels) is read through `msseg_core.data.CamVidDataset`, so labels mean exactly what they mean in
    training and evaluation; other layouts fall back to a plain reader (ids >= 11 = void).
    """

    kind = "folder"

    def __init__(self, folder: str | Path, size: tuple[int, int] | None = None):
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {self.folder}")
        self.size = size
        self.label_dir = find_label_dir(self.folder)
        self.labels: dict[str, Path] = {}
        if self.label_dir is not None:
            for p in sorted(self.label_dir.iterdir()):
                if p.suffix.lower() in IMAGE_EXTS:
                    self.labels.setdefault(p.stem, p)
                    for tail in ("_L", "_labels", "_label", "_gt"):  # CamVid colour labels: 0001TP_006690_L.png
                        if p.stem.endswith(tail):
                            self.labels.setdefault(p.stem[: -len(tail)], p)
        self.has_labels = any(f.stem in self.labels for f in self.files)
        self.dataset = None
        if self.has_labels:
            from msseg_core.data.datasets import CamVidDataset, DatasetError

            try:
                self.dataset = CamVidDataset(self.folder.parent, self.folder.name)
            except DatasetError as exc:  # not a complete CamVid split: images and label files read as they are
                log.info("%s is not a CamVid split (%s); labels are read as plain files", self.folder, exc)
                self.dataset = None

    def __iter__(self) -> Iterator[Frame]:
        if self.dataset is not None:
            for i in range(len(self.dataset)):
                rgb, labels = self.dataset.load(i)
                yield _resize(Frame(rgb, labels, i, self.dataset.samples[i][0].name), self.size)
            return
        for i, path in enumerate(self.files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cannot read image {path}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            labels = None
            if path.stem in self.labels:
                labels = _read_labels(self.labels[path.stem])
                if labels.shape != rgb.shape[:2]:
                    raise ValueError(f"label {self.labels[path.stem]} is {labels.shape}, image {path} is "
                                     f"{rgb.shape[:2]}")
            yield _resize(Frame(rgb, labels, i, path.name), self.size)

    def describe(self) -> str:
        extra = f", labels from {self.label_dir}" if self.has_labels else ""
        if self.dataset is not None:
            extra += f" as CamVid {self.dataset.layout} layout"
        n = len(self.dataset) if self.dataset is not None else len(self.files)
        return f"folder {self.folder} ({n} images{extra})"


class ImageFileSource(FrameSource):
    """A single image file: one frame."""

    kind = "image"

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None):
        self.path, self.size = Path(path), size

    def __iter__(self) -> Iterator[Frame]:
        bgr = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {self.path}")
        yield _resize(Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, 0, self.path.name), self.size)

    def describe(self) -> str:
        return f"image {self.path}"


class VideoSource(FrameSource):
    """A video file read with OpenCV; the frame's position in the video is its stamp."""

    kind = "video"

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None):
        self.path, self.size = Path(path), size
        cap = cv2.VideoCapture(str(self.path))
        ok = cap.isOpened()
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if ok else 0.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if ok else 0
        cap.release()
        if not ok:
            raise ValueError(f"cannot open {self.path} as a video (OpenCV could not read it)")

    def __iter__(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)  # after read: the time of the frame just decoded
                if self.fps > 0 and (i == 0 or not pos_ms or pos_ms <= 0):
                    stamp: int | None = int(round(i * 1e9 / self.fps))
                else:
                    stamp = int(round(pos_ms * 1e6)) if pos_ms and pos_ms > 0 else None
                yield _resize(Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, i, f"{self.path.name}#{i}", stamp),
                              self.size)
                i += 1
        finally:
            cap.release()

    def describe(self) -> str:
        return f"video {self.path} ({self.frame_count} frames at {self.fps:.3g} fps)"


def _stamp_ns(msg, fallback: int) -> int:
    header = getattr(msg, "header", None)
    if header is None:
        return fallback
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return ns if ns > 0 else fallback


class BagSource(FrameSource):
    """Image frames of a rosbag2 (folder, .mcap, .db3) or rosbag1 (.bag) recording, read with rosbags.

    `image_topic` picks the camera topic; by default the first Image/CompressedImage topic (sorted)
    whose name does not look like a derived output (labels, masks, overlays...). Ground truth comes
    from `labels_topic`, or a mono8 topic with 'ground_truth' in its name, matched by header stamp.
    """

    kind = "rosbag"

    def __init__(self, path: str | Path, image_topic: str | None = None, labels_topic: str | None = None,
                 size: tuple[int, int] | None = None):
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path, self.size = Path(path), size
        self._reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        self._reader.open()
        topics = {c.topic: c.msgtype for c in self._reader.connections}
        images = sorted(t for t, ty in topics.items() if ty in IMAGE_TYPES)
        if image_topic:
            if image_topic not in topics:
                self.close()
                raise ValueError(f"topic {image_topic!r} is not in {self.path}; image topics: {images or 'none'}")
            if topics[image_topic] not in IMAGE_TYPES:
                self.close()
                raise ValueError(f"topic {image_topic!r} is {topics[image_topic]}, not an image; "
                                 f"image topics: {images}")
            self.image_topic = image_topic
        else:
            cams = [t for t in images if not any(k in t.lower() for k in _NOT_CAMERA)]
            if not images:
                self.close()
                raise ValueError(f"no sensor_msgs Image or CompressedImage topic in {self.path}; topics: "
                                 f"{sorted(topics) or 'none'}")
            self.image_topic = (cams or images)[0]
        if labels_topic is None:
            gts = [t for t in images if "ground_truth" in t and topics[t] == "sensor_msgs/msg/Image"]
            labels_topic = gts[0] if gts else None
        elif labels_topic not in topics:
            self.close()
            raise ValueError(f"labels topic {labels_topic!r} is not in {self.path}")
        self.labels_topic = labels_topic
        self.has_labels = labels_topic is not None
        self._read_camera_info(topics)

    def _read_camera_info(self, topics: dict[str, str]) -> None:
        infos = [t for t, ty in topics.items() if ty == "sensor_msgs/msg/CameraInfo"]
        if not infos:
            return
        base = self.image_topic.rsplit("/", 1)[0]
        infos.sort(key=lambda t: (not t.startswith(base + "/"), t))  # the camera's own info first
        conns = [c for c in self._reader.connections if c.topic == infos[0]]
        for conn, _, raw in self._reader.messages(connections=conns):
            with contextlib.suppress(CameraError):  # uncalibrated, or an unknown distortion model: as if none
                self.camera = PinholeCamera.from_camera_info(self._reader.deserialize(raw, conn.msgtype))
            return

    def _decode(self, msg, msgtype: str) -> np.ndarray:
        from msseg_ros.transport.image_codec import decode_compressed, decode_image

        return decode_compressed(msg) if msgtype.endswith("CompressedImage") else decode_image(msg)

    def __iter__(self) -> Iterator[Frame]:
        wanted = [c for c in self._reader.connections if c.topic in (self.image_topic, self.labels_topic)]
        labels_by_stamp: dict[int, np.ndarray] = {}
        pending: list[tuple[int, np.ndarray]] = []
        i = 0

        def emit(stamp: int, rgb: np.ndarray) -> Frame:
            return _resize(Frame(rgb, labels_by_stamp.pop(stamp, None), i, self.image_topic, stamp), self.size)

        for conn, t, raw in self._reader.messages(connections=wanted):
            msg = self._reader.deserialize(raw, conn.msgtype)
            stamp = _stamp_ns(msg, t)
            if conn.topic == self.labels_topic and conn.topic != self.image_topic:
                rows = np.asarray(msg.data, np.uint8).reshape(-1)[: msg.step * msg.height].reshape(msg.height, msg.step)
                labels_by_stamp[stamp] = rows[:, : msg.width].copy()
                continue
            rgb = self._decode(msg, conn.msgtype)
            if self.labels_topic is None:
                yield emit(stamp, rgb)
                i += 1
                continue
            pending.append((stamp, rgb))  # its labels may be stored just after it
            while len(pending) > 1 or (pending and pending[0][0] in labels_by_stamp):
                s, im = pending.pop(0)
                yield emit(s, im)
                i += 1
                if len(labels_by_stamp) > 64:  # labels without an image: forget the oldest
                    labels_by_stamp.pop(min(labels_by_stamp))
        for s, im in pending:
            yield emit(s, im)
            i += 1

    def describe(self) -> str:
        extra = f", labels from {self.labels_topic}" if self.labels_topic else ""
        return f"recording {self.path} (topic {self.image_topic}{extra})"

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._reader.close()
            self._reader = None


def is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or (path.is_file() and path.suffix in BAG_EXTS)


def open_source(spec: str = "", *, seed: int = 0, width: int = 0, height: int = 0, fps: float = 10.0,
                image_topic: str | None = None, labels_topic: str | None = None,
                hfov_deg: float | None = None) -> FrameSource:
    """Open the source a spec names (see the module docstring). width/height > 0 resize every frame
    (the synthetic renderer renders at that size; 0 = 480 x 360 there, native size elsewhere)."""
    spec = (spec or "").strip()
    size = (int(width), int(height)) if width > 0 and height > 0 else None
    if width < 0 or height < 0 or (width > 0) != (height > 0):
        raise ValueError(f"width and height must both be > 0 (resize) or both 0 (native), got {width}x{height}")
    if spec == "" or spec == "synthetic" or spec.startswith("synthetic:"):
        if spec.startswith("synthetic:"):
            try:
                seed = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"synthetic source spec must be 'synthetic:SEED' with an integer seed, got "
                                 f"{spec!r}") from None
        w, h = size or (480, 360)
        return SyntheticSource(seed, w, h, fps=fps, hfov_deg=hfov_deg)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input {spec!r} does not exist (give a folder of images, a video, a rosbag, "
                                f"or 'synthetic')")
    if is_bag(path):
        return BagSource(path, image_topic=image_topic, labels_topic=labels_topic, size=size)
    if path.is_dir():
        return FolderSource(path, size=size)
    if path.suffix.lower() in IMAGE_EXTS:
        return ImageFileSource(path, size=size)
    return VideoSource(path, size=size)
