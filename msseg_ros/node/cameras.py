"""The cameras one segmentation node serves: their names, topics and parameters, and what the node
keeps per camera (counters, road grid, latest CameraInfo, its publishers and subscriptions).

`cameras` empty (the default): one camera with the node's plain names, as a single-camera node always
had them: `image`, `camera_info` and the outputs directly in the node's namespace, road-grid parameters
without a prefix, diagnostics status `<node>: segmentation`. `cameras: [front, left]`: every topic of a
camera under its name (`front/image`, `front/camera_info`, `front/labels`, ...), its road-grid
parameters as `front.camera_height`, ..., and its diagnostics status `<node>: front`. One model serves
every camera; the worker batches their pending frames (`pipeline.CameraMailboxes`).
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from msseg_ros.node.pipeline import FrameStats
from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS, RoadGridBuilder

CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
SINGLE_CAMERA_LABEL = "segmentation"
"""The diagnostics name of the one camera of a node without `cameras`."""
PER_CAMERA_PARAMETERS = tuple(ROAD_GRID_DEFAULTS)
"""Parameters every camera has as `<camera>.<name>`: its mounting, its grid and its road-mask clean-up."""


def check_camera_names(names: Sequence[str], reserved: Iterable[str] = ()) -> str | None:
    """Why this `cameras` list cannot be used (a bad or duplicate name, a node parameter's name), or None."""
    taken = set(reserved) | {"qos_overrides"}
    seen: set[str] = set()
    for name in names:
        if not CAMERA_NAME.match(name):
            return f"camera name {name!r} must start with a letter and hold only letters, digits and '_'"
        if name in taken:
            return f"camera name {name!r} is the name of a node parameter"
        if name in seen:
            return f"camera {name!r} is listed twice"
        seen.add(name)
    return None


def check_camera_parameters(given: Iterable[str], cameras: Sequence[str]) -> tuple[str | None, list[str]]:
    """(error, notes) for the `<camera>.<parameter>` values given at start-up (a params file, -p ...).

    A params file may describe more cameras than are launched (`cameras:="[front,left]"` with a file that
    mounts front, left and right): the others' parameters are ignored, with a note. Errors, because a
    camera would otherwise run silently mounted at the defaults: a per-camera parameter that does not
    exist, and a listed camera without parameters of its own whose name is close to a described camera
    that is not listed (a misspelling, e.g. `lefft` where the file mounts `left`)."""
    described: dict[str, list[str]] = {}
    for name in sorted(given):
        prefix, dot, rest = name.partition(".")
        if not dot or prefix == "qos_overrides":
            continue
        if prefix in cameras and rest not in PER_CAMERA_PARAMETERS:
            return (f"parameter {name}: cameras have no parameter {rest!r}; per-camera parameters are "
                    f"{', '.join(PER_CAMERA_PARAMETERS)}"), []
        if rest in PER_CAMERA_PARAMETERS:
            described.setdefault(prefix, []).append(rest)
    notes = []
    unlisted = sorted(set(described) - set(cameras))
    for camera in cameras:
        if camera in described or not described:
            continue
        close = difflib.get_close_matches(camera, unlisted, n=1, cutoff=0.75)
        if close:
            return (f"camera {camera!r} has no parameters of its own, but {close[0]!r} has (and is not in "
                    f"cameras: {', '.join(cameras)}): a misspelling?"), []
        notes.append(f"camera {camera} has no parameters of its own: it uses the top-level values")
    if unlisted:
        notes.append(f"parameters of cameras not in `cameras` ignored: {', '.join(unlisted)}")
    return None, notes


def auto_streams(cameras: int, threads: int, device_type: str, cores: int) -> int:
    """streams 0: one per camera, up to twice the usable `cores`; 1 for a single camera, for threads 0
    (one stream already takes every core) and on CUDA (one GPU).

    Twice, and whatever `threads`: a worker is off its cores part of the time (waiting for the
    interpreter lock, publishing), and a spare one keeps them busy, as separate processes do (measured
    against separate nodes: BENCHMARKS.md, "Several cameras")."""
    if cameras <= 1 or threads <= 0 or device_type != "cpu":
        return 1
    return max(1, min(cameras, 2 * cores))


class Camera:
    """One camera of the node. `name` '' is the single camera of a node without `cameras`."""

    def __init__(self, name: str, index: int, road_grid: RoadGridBuilder) -> None:
        self.name = name
        self.index = index  # its slot in the node's CameraMailboxes
        self.label = name or SINGLE_CAMERA_LABEL
        self.stats = FrameStats()
        self.road_grid = road_grid
        self.camera_info: Any = None  # latest sensor_msgs/CameraInfo
        # ROS entities, made by the node on configure:
        self.image_sub: Any = None
        self.camera_info_sub: Any = None
        self.output_pubs: dict[str, Any] = {}  # image outputs
        self.road_grid_pub: Any = None
        self.point_pubs: dict[str, Any] = {}  # obstacle_points, road_points, semantic/points
        self.semantic_pubs: dict[str, Any] = {}  # semantic/labels, semantic/confidence
        self.diag_last = (time.monotonic(), 0)  # (time, processed) at the last status: the output rate

    def topic(self, name: str) -> str:
        """The camera's name for a node topic: 'labels' -> 'front/labels' ('labels' for the single camera)."""
        return f"{self.name}/{name}" if self.name else name

    def parameter(self, name: str) -> str:
        """The camera's name for a per-camera parameter: 'camera_height' -> 'front.camera_height'."""
        return f"{self.name}.{name}" if self.name else name

    def publishers(self) -> list[Any]:
        grid = [self.road_grid_pub] if self.road_grid_pub is not None else []
        return [*self.output_pubs.values(), *grid, *self.point_pubs.values(), *self.semantic_pubs.values()]
