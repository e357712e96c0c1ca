"""What is in a bag (`msseg-bag info`), and the bag facts every subcommand shares: the rosbag2 version
and storage plugins written, and which topic holds the camera images."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msseg_ros.transport import topics
from msseg_ros.transport.messages import IMAGE_TYPES

BAG_VERSION = 8
"""rosbag2 metadata version written: 8 is what Jazzy's rosbag2 writes and reads (and later releases read)."""


def storage_plugin(name: str) -> Any:
    """'mcap' or 'sqlite3' -> the rosbags storage plugin (ValueError otherwise)."""
    from rosbags.rosbag2 import StoragePlugin

    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise ValueError(f"storage must be mcap or sqlite3, got {name!r}") from None


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
        found: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            _, count = found.get(c.topic, (c.msgtype, 0))
            found[c.topic] = (c.msgtype, count + c.msgcount)
        custom = {}
        meta = getattr(reader, "metadata", None) or getattr(getattr(reader, "storage", None), "metadata", None)
        if meta is not None and getattr(meta, "custom", None):
            custom = dict(meta.custom)
        else:  # fall back to the YAML itself
            custom = _custom_data_from_yaml(Path(path))
        start, end = (reader.start_time, reader.end_time) if reader.message_count else (0, 0)
    return BagInfo(str(path), found, start, end, custom)


def _custom_data_from_yaml(path: Path) -> dict[str, str]:
    try:
        import yaml

        data = yaml.safe_load((path / "metadata.yaml").read_text())
        return dict(data["rosbag2_bagfile_information"].get("custom_data") or {})
    except Exception:  # noqa: BLE001 - custom data is optional decoration
        return {}


def pick_image_topic(found: dict[str, tuple[str, int]], requested: str | None) -> str:
    """The camera topic among a bag's topics: `requested` (checked), else the default camera topics,
    else the only image topic that is not ground truth (ValueError when that is ambiguous)."""
    if requested:
        if requested not in found:
            raise ValueError(f"topic {requested} is not in the bag; topics: {sorted(found)}")
        if found[requested][0] not in IMAGE_TYPES:
            raise ValueError(f"{requested} is {found[requested][0]}, not an Image or CompressedImage")
        return requested
    for preferred in (topics.CAMERA_IMAGE, topics.CAMERA_COMPRESSED_IMAGE):
        if preferred in found and found[preferred][0] in IMAGE_TYPES:
            return preferred
    candidates = [t for t, (ty, _) in found.items() if ty in IMAGE_TYPES and t != topics.GROUND_TRUTH_LABELS]
    if len(candidates) != 1:
        raise ValueError(f"cannot choose the image topic among {sorted(candidates)}; pass --image-topic")
    return candidates[0]
