"""Launch the msseg segmentation node on a camera: the YAML parameters, a few overrides, the remaps.

    ros2 launch msseg_ros camvid.launch.py image_topic:=/cam/image checkpoint:=/models/camvid.safetensors

does the same as the plain command (which needs no `launch` package):

    segmentation_node --ros-args --params-file <share>/msseg_ros/config/camvid.yaml -r __ns:=/msseg \
        -r image:=/cam/image -r image/compressed:=/cam/image/compressed -r camera_info:=/cam/camera_info \
        -p checkpoint:=/models/camvid.safetensors --log-level info

Safe to include from a stack's bringup: everything runs in a scoped group (this file's argument
defaults never reach the parent's later actions) and the Fast DDS profile goes to the node process
only. Pass the arguments you mean in the include: launch hands an included file the values of the
parent's arguments of the same name (`namespace`, `params_file`, `use_sim_time`, ...) unless the
include sets them. `autostart:=false` leaves the node unconfigured for a lifecycle manager.

`launch` and `launch_ros` are imported only inside generate_launch_description(), so the module-level
description below (executable, params file, arguments, remaps) can be imported and checked where
`launch` is not installed; `node_arguments()` builds the plain command from the same data. Topic
names come from `msseg_ros.transport.topics`.
"""

from __future__ import annotations

import os

from msseg_ros.tools import launching
from msseg_ros.transport import topics

PACKAGE = "msseg_ros"
NODE_EXECUTABLE = "segmentation_node"  # console script in setup.py
NODE_NAME = "msseg_node"
PARAMS_FILE = "config/camvid.yaml"  # relative to the package share dir (and to the source tree)

# launch argument -> (default, description)
ARGUMENTS: dict[str, tuple[str, str]] = {
    "image_topic": (topics.CAMERA_IMAGE, "Camera image topic (sensor_msgs/Image); <topic>/compressed for compressed"),
    "camera_info_topic": (topics.CAMERA_CAMERA_INFO, "Camera info topic (sensor_msgs/CameraInfo)"),
    "namespace": (topics.NAMESPACE.strip("/"), "Namespace of the node and its output topics"),
    "params_file": ("", f"Node parameters YAML; '' = <share>/{PACKAGE}/{PARAMS_FILE}"),
    "checkpoint": ("", "Model checkpoint; '' = as in params_file"),
    "device": ("", "auto | cpu | cuda | cuda:N; '' = as in params_file"),
    "precision": ("", "fp32 | fp16 | bf16 | int8; '' = as in params_file"),
    "tta": ("", "none | flip (also run the mirrored frame, average the logits); '' = as in params_file"),
    **launching.NODE_ARGUMENTS,
}
# Launch arguments that override the parameter of the same name when not empty.
PARAMETER_ARGUMENTS = ("checkpoint", "device", "precision", "tta")
# (name the node uses, launch argument giving the target, suffix appended to it)
REMAPS: list[tuple[str, str, str]] = [
    (topics.IMAGE, "image_topic", ""),
    (topics.COMPRESSED_IMAGE, "image_topic", "/compressed"),
    (topics.CAMERA_INFO, "camera_info_topic", ""),
]


def resolve(values: dict[str, str], share_dir: str) -> dict:
    """Launch argument values (missing = default) -> namespace, params file, overrides, remaps, node
    options (ValueError for a bad value)."""
    v = {name: values.get(name, default) for name, (default, _) in ARGUMENTS.items()}
    return {
        "namespace": v["namespace"],
        "params_file": v["params_file"] or os.path.join(share_dir, PARAMS_FILE),
        "overrides": {name: v[name] for name in PARAMETER_ARGUMENTS if v[name]},
        "remaps": [(src, v[arg] + suffix) for src, arg, suffix in REMAPS],
        "options": launching.node_options(v),
    }


def node_arguments(values: dict[str, str], share_dir: str) -> list[str]:
    """The `--ros-args ...` list equivalent to launching with these argument values."""
    return launching.plain_arguments(resolve(values, share_dir))


def generate_launch_description():
    return launching.node_launch_description(PACKAGE, ARGUMENTS, resolve, NODE_EXECUTABLE, NODE_NAME)
