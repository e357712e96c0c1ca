"""Launch one segmentation node for several cameras: one model in memory, their frames batched.

    ros2 launch msseg_ros multi_camera.launch.py cameras:="[front,left,right]" image_topic:=/{camera}/image_raw

does the same as the plain command (which needs no `launch` package):

    segmentation_node --ros-args --params-file <share>/msseg_ros/config/multi_camera.yaml -r __ns:=/msseg \
        -r front/image:=/front/image_raw -r front/image/compressed:=/front/image_raw/compressed \
        -r front/camera_info:=/front/camera_info ... (left, right alike) -p cameras:=[front,left,right] \
        --log-level info

Camera `front`'s outputs are /msseg/front/labels, /msseg/front/road_grid, ...; its road-grid mounting
is `front.camera_height`, `front.camera_pitch`, ... in params_file (config/multi_camera.yaml shows
them). `image_topic` and `camera_info_topic` are patterns: `{camera}` becomes each camera's name.
Composes like camvid.launch.py: a scoped group, the Fast DDS profile on the node process only.

`launch` and `launch_ros` are imported only inside generate_launch_description(); `resolve()` and
`node_arguments()` can be imported and checked without them.
"""

from __future__ import annotations

import os

from msseg_ros.node.cameras import check_camera_names
from msseg_ros.tools import launching
from msseg_ros.transport import topics

PACKAGE = "msseg_ros"
NODE_EXECUTABLE = "segmentation_node"
NODE_NAME = "msseg_node"
PARAMS_FILE = "config/multi_camera.yaml"  # relative to the package share dir (and to the source tree)

# launch argument -> (default, description)
ARGUMENTS: dict[str, tuple[str, str]] = {
    "cameras": ("[front,left,right]", "Camera names, e.g. [front,left,right]: topics <namespace>/<camera>/..."),
    "image_topic": ("/{camera}/image_raw", "Each camera's image topic; {camera} = its name"),
    "camera_info_topic": ("/{camera}/camera_info", "Each camera's CameraInfo topic; {camera} = its name"),
    "namespace": (topics.NAMESPACE.strip("/"), "Namespace of the node and its output topics"),
    "params_file": ("", f"Node parameters YAML (per-camera mounting); '' = <share>/{PACKAGE}/{PARAMS_FILE}"),
    "checkpoint": ("", "Model checkpoint; '' = as in params_file"),
    "device": ("", "auto | cpu | cuda | cuda:N; '' = as in params_file"),
    "precision": ("", "fp32 | fp16 | bf16 | int8; '' = as in params_file"),
    "tta": ("", "none | flip (also run the mirrored frame, average the logits); '' = as in params_file"),
    **launching.NODE_ARGUMENTS,
}
PARAMETER_ARGUMENTS = ("checkpoint", "device", "precision", "tta")  # override the parameter of that name when not empty
# (topic the node uses for a camera, launch argument with the target pattern, suffix appended to it)
REMAPS: list[tuple[str, str, str]] = [
    (topics.IMAGE, "image_topic", ""),
    (topics.COMPRESSED_IMAGE, "image_topic", "/compressed"),
    (topics.CAMERA_INFO, "camera_info_topic", ""),
]


def parse_cameras(text: str) -> list[str]:
    """'[front, left]' or 'front,left' -> ['front', 'left'] (ValueError for a bad list)."""
    names = [n.strip().strip("'\"") for n in str(text).strip().strip("[]").split(",") if n.strip()]
    if not names:
        raise ValueError("launch argument cameras needs at least one camera name (camvid.launch.py runs the "
                         "node on one camera's plain topic names)")
    if problem := check_camera_names(names):
        raise ValueError(f"launch argument cameras: {problem}")
    return names


def resolve(values: dict[str, str], share_dir: str) -> dict:
    """Launch argument values (missing = default) -> namespace, params file, overrides (cameras
    included), remaps for every camera, node options (ValueError for a bad value)."""
    v = {name: values.get(name, default) for name, (default, _) in ARGUMENTS.items()}
    cameras = parse_cameras(v["cameras"])
    return {
        "namespace": v["namespace"],
        "params_file": v["params_file"] or os.path.join(share_dir, PARAMS_FILE),
        "overrides": {"cameras": cameras, **{name: v[name] for name in PARAMETER_ARGUMENTS if v[name]}},
        "remaps": [(f"{camera}/{src}", v[arg].replace("{camera}", camera) + suffix)
                   for camera in cameras for src, arg, suffix in REMAPS],
        "options": launching.node_options(v),
    }


def node_arguments(values: dict[str, str], share_dir: str) -> list[str]:
    """The `--ros-args ...` list equivalent to launching with these argument values."""
    return launching.plain_arguments(resolve(values, share_dir))


def generate_launch_description():
    return launching.node_launch_description(PACKAGE, ARGUMENTS, resolve, NODE_EXECUTABLE, NODE_NAME)
