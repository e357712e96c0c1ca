"""Replay a labelled bag through the segmentation node and score it live: player + node + evaluator.

    ros2 launch msseg_ros replay_eval.launch.py bag:=camvid_test checkpoint:=model.safetensors

Processes: `msseg-bag play <bag> --restamp [--lockstep]` (image, camera_info, ground truth),
`segmentation_node` in /msseg (image remapped to the bag's camera topic) and `evaluator_node`
(labels + ground truth matched by stamp; report written to `report_path` periodically and when the
launch shuts down, which happens `drain` seconds after the player finishes).

The same wiring without `launch` (not installable from PyPI), in one process tree:

    msseg-bag replay-eval --bag camvid_test --checkpoint model.safetensors --lockstep --json report.json

`launch` and `launch_ros` are imported only inside generate_launch_description(); the module-level
data and `commands()` (the three plain command lines) can be imported and checked without them.
Topic names come from `msseg_ros.transport.topics`.
"""

from __future__ import annotations

import os

from msseg_ros.tools import launching
from msseg_ros.transport import topics

PACKAGE = "msseg_ros"
NODE_EXECUTABLE = "segmentation_node"
NODE_NAME = "msseg_node"
EVALUATOR_EXECUTABLE = "evaluator_node"
EVALUATOR_NAME = "msseg_evaluator"
PLAYER_EXECUTABLE = "msseg-bag"
PARAMS_FILE = "config/camvid.yaml"  # node parameters, relative to the package share dir

# launch argument -> (default, description)
ARGUMENTS: dict[str, tuple[str, str]] = {
    "bag": ("", "rosbag2 directory from `msseg-bag make` (required)"),
    "checkpoint": ("", "model checkpoint; '' = as in params_file (the packaged model)"),
    "device": ("", "auto | cpu | cuda | cuda:N; '' = as in params_file"),
    "params_file": ("", f"node parameters YAML; '' = <share>/{PACKAGE}/{PARAMS_FILE}"),
    "namespace": (topics.NAMESPACE.strip("/"), "namespace of the node (its labels topic is /<namespace>/labels)"),
    "lockstep": ("true", "publish the next frame only after the node answered the previous one"),
    "rate": ("1.0", "playback speed factor when not lock-step"),
    "timeout": ("10.0", "lock-step wait per frame [s]; then the frame counts as lost"),
    "report_path": ("replay_eval.json", "evaluator report (JSON)"),
    "drain": ("3.0", "seconds between the player's end and shutdown (last frames, final report)"),
    "log_level": launching.NODE_ARGUMENTS["log_level"],
    "sigterm_timeout": launching.NODE_ARGUMENTS["sigterm_timeout"],
}
PARAMETER_ARGUMENTS = ("checkpoint", "device")  # override the node parameter of that name when not empty


def _true(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


def resolve(values: dict[str, str], share_dir: str) -> dict:
    """Launch argument values (missing = default) -> everything the three processes need."""
    v = {name: values.get(name, default) for name, (default, _) in ARGUMENTS.items()}
    if not v["bag"]:
        raise ValueError("replay_eval.launch.py needs bag:=<rosbag2 directory>")
    namespace = "/" + v["namespace"].strip("/") if v["namespace"].strip("/") else ""
    labels = topics.in_namespace(namespace, topics.LABELS)
    player = ["play", v["bag"], "--restamp", "--labels-topic", labels, "--rate", v["rate"],
              "--timeout", v["timeout"], "--wait-subscribers", "120",
              "--wait-for", topics.CAMERA_IMAGE, "--wait-for", topics.GROUND_TRUTH_LABELS]
    if _true(v["lockstep"]):
        player.append("--lockstep")
    return {
        "namespace": namespace,
        "params_file": v["params_file"] or os.path.join(share_dir, PARAMS_FILE),
        "node_overrides": {name: v[name] for name in PARAMETER_ARGUMENTS if v[name]},
        "node_remaps": [(topics.IMAGE, topics.CAMERA_IMAGE), (topics.CAMERA_INFO, topics.CAMERA_CAMERA_INFO)],
        "evaluator_params": {"report_path": v["report_path"], "checkpoint": v["checkpoint"]},
        "evaluator_remaps": [(topics.LABELS, labels), (topics.GROUND_TRUTH, topics.GROUND_TRUTH_LABELS)],
        "player_arguments": player,
        "drain": float(v["drain"]),
        "options": launching.node_options({k: v[k] for k in ("log_level", "sigterm_timeout")}),
    }


def commands(values: dict[str, str], share_dir: str) -> dict[str, list[str]]:
    """The plain command lines (executable first) equivalent to launching with these values."""
    r = resolve(values, share_dir)
    node = [NODE_EXECUTABLE, "--ros-args", "--params-file", r["params_file"]]
    if r["namespace"]:
        node += ["-r", f"__ns:={r['namespace']}"]
    node += [a for src, dst in r["node_remaps"] for a in ("-r", f"{src}:={dst}")]
    node += [a for k, val in r["node_overrides"].items() for a in ("-p", f"{k}:={val}")]
    evaluator = [EVALUATOR_EXECUTABLE, "--ros-args"]
    evaluator += [a for src, dst in r["evaluator_remaps"] for a in ("-r", f"{src}:={dst}")]
    evaluator += [a for k, val in r["evaluator_params"].items() for a in ("-p", f"{k}:={val}")]
    return {"node": node, "evaluator": evaluator, "player": [PLAYER_EXECUTABLE, *r["player_arguments"]]}


def generate_launch_description():
    from ament_index_python.packages import get_package_prefix, get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import (
        EmitEvent,
        ExecuteProcess,
        OpaqueFunction,
        RegisterEventHandler,
        TimerAction,
    )
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch_ros.actions import Node

    share = get_package_share_directory(PACKAGE)
    actions = launching.declare(ARGUMENTS)

    def make_processes(context):
        r = resolve(launching.values(context, ARGUMENTS), share)
        # Each process gets the large-image profile (the player sends 2 MB frames), none other of a parent's.
        common = {"output": "screen", "sigterm_timeout": r["options"]["sigterm_timeout"],
                  "additional_env": launching.profile_env(share)}
        ros_args = ["--log-level", r["options"]["log_level"]]
        node = Node(package=PACKAGE, executable=NODE_EXECUTABLE, name=NODE_NAME, namespace=r["namespace"],
                    parameters=[r["params_file"], r["node_overrides"]], remappings=r["node_remaps"],
                    ros_arguments=ros_args, **common)
        evaluator = Node(package=PACKAGE, executable=EVALUATOR_EXECUTABLE, name=EVALUATOR_NAME,
                         parameters=[r["evaluator_params"]], remappings=r["evaluator_remaps"],
                         ros_arguments=ros_args, **common)
        # msseg-bag is a console script in lib/<package> (setup.cfg), but not a ROS node: no --ros-args.
        player_exe = os.path.join(get_package_prefix(PACKAGE), "lib", PACKAGE, PLAYER_EXECUTABLE)
        player = ExecuteProcess(cmd=[player_exe, *r["player_arguments"]], name="msseg_bag_play", **common)
        done = RegisterEventHandler(OnProcessExit(target_action=player, on_exit=[
            TimerAction(period=r["drain"], actions=[EmitEvent(event=Shutdown(reason="bag finished"))])]))
        return [node, evaluator, player, done]

    actions.append(OpaqueFunction(function=make_processes))
    return LaunchDescription(actions)
