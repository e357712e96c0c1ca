"""Launch the msseg segmentation node on a camera: the YAML parameters, a few overrides, the remaps.

    ros2 launch msseg_ros camvid.launch.py image_topic:=/cam/image checkpoint:=/models/camvid.safetensors

does the same as the plain command (which needs no `launch` package):

    segmentation_node --ros-args --params-file <share>/msseg_ros/config/camvid.yaml -r __ns:=/msseg \
        -r image:=/cam/image -r image/compressed:=/cam/image/compressed -r camera_info:=/cam/camera_info \
        -p checkpoint:=/models/camvid.safetensors

`launch` and `launch_ros` are imported only inside generate_launch_description(), so the module-level
description below (executable, params file, arguments, remaps) can be imported and checked where
`launch` is not installed; `node_arguments()` builds the plain command from the same data.
"""

from __future__ import annotations

import os

PACKAGE = "msseg_ros"
NODE_EXECUTABLE = "segmentation_node"  # console script in setup.py
NODE_NAME = "msseg_node"
PARAMS_FILE = "config/camvid.yaml"  # relative to the package share dir (and to the source tree)
FASTDDS_PROFILE = "config/fastdds_large_images.xml"
PROFILE_ENV_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")

# launch argument -> (default, description)
ARGUMENTS: dict[str, tuple[str, str]] = {
    "image_topic": ("/camera/image_raw", "Camera image topic (sensor_msgs/Image); <topic>/compressed for compressed"),
    "camera_info_topic": ("/camera/camera_info", "Camera info topic (sensor_msgs/CameraInfo)"),
    "namespace": ("msseg", "Namespace of the node and its output topics"),
    "params_file": ("", f"Node parameters YAML; '' = <share>/{PACKAGE}/{PARAMS_FILE}"),
    "checkpoint": ("", "Model checkpoint; '' = as in params_file"),
    "device": ("", "auto | cpu | cuda | cuda:N; '' = as in params_file"),
    "precision": ("", "fp32 | fp16 | bf16; '' = as in params_file"),
}
# Launch arguments that override the parameter of the same name when not empty.
PARAMETER_ARGUMENTS = ("checkpoint", "device", "precision")
# (name the node uses, launch argument giving the target, suffix appended to it)
REMAPS: list[tuple[str, str, str]] = [
    ("image", "image_topic", ""),
    ("image/compressed", "image_topic", "/compressed"),
    ("camera_info", "camera_info_topic", ""),
]


def resolve(values: dict[str, str], share_dir: str) -> dict:
    """Launch argument values (missing = default) -> namespace, params file, overrides, remaps."""
    v = {name: values.get(name, default) for name, (default, _) in ARGUMENTS.items()}
    return {
        "namespace": v["namespace"],
        "params_file": v["params_file"] or os.path.join(share_dir, PARAMS_FILE),
        "overrides": {name: v[name] for name in PARAMETER_ARGUMENTS if v[name]},
        "remaps": [(src, v[arg] + suffix) for src, arg, suffix in REMAPS],
    }


def node_arguments(values: dict[str, str], share_dir: str) -> list[str]:
    """The `--ros-args ...` list equivalent to launching with these argument values."""
    r = resolve(values, share_dir)
    args = ["--ros-args", "--params-file", r["params_file"]]
    if r["namespace"]:
        args += ["-r", "__ns:=/" + r["namespace"].strip("/")]
    for src, dst in r["remaps"]:
        args += ["-r", f"{src}:={dst}"]
    for name, value in r["overrides"].items():
        args += ["-p", f"{name}:={value}"]
    return args


def generate_launch_description():
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch_ros.actions import Node

    share = get_package_share_directory(PACKAGE)
    actions = [DeclareLaunchArgument(name, default_value=default, description=text)
               for name, (default, text) in ARGUMENTS.items()]
    # Large frames need the Fast DDS profile in every process; keep a profile the user chose.
    if not any(os.environ.get(var) for var in PROFILE_ENV_VARS):
        actions += [SetEnvironmentVariable(var, os.path.join(share, FASTDDS_PROFILE)) for var in PROFILE_ENV_VARS]

    def make_node(context):
        r = resolve({name: context.launch_configurations.get(name, "") for name in ARGUMENTS}, share)
        return [Node(package=PACKAGE, executable=NODE_EXECUTABLE, name=NODE_NAME, namespace=r["namespace"],
                     parameters=[r["params_file"], r["overrides"]], remappings=r["remaps"], output="screen")]

    actions.append(OpaqueFunction(function=make_node))
    return LaunchDescription(actions)
