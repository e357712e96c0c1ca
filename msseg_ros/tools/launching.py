"""What the launch files (launch/*.launch.py) do alike: their common node arguments, the Fast DDS
large-image profile for the processes they start, and a scope that keeps them composable.

Composable: a launch file's actions run inside a scoped GroupAction, so its arguments' defaults and
anything it sets end with it (a parent that includes it keeps its own `namespace`, `params_file`, ...),
and the profile goes to the file's own processes through `additional_env`, never into the environment
of processes a parent starts later. `launch` is imported only when these run (ros2 launch has it; PyPI
does not), so the launch files' module-level data stays testable without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from msseg_ros.transport.qos import FASTDDS_PROFILE_NAME, PROFILE_ENV_VARS

FASTDDS_PROFILE = f"config/{FASTDDS_PROFILE_NAME}"
"""The profile, relative to the package share dir."""
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
NODE_ARGUMENTS: dict[str, tuple[str, str]] = {
    "use_sim_time": ("", "true | false: the node's clock from /clock (outputs keep their input's stamps); "
                         "'' = as in params_file"),
    "autostart": ("", "true | false: the node configures and activates itself; false = a lifecycle manager "
                      "(Nav2's, Autoware's) drives it; '' = as in params_file (default true)"),
    "log_level": ("info", f"the node's log level: {', '.join(LOG_LEVELS)}"),
    "respawn": ("false", "true: start the node again when it dies"),
    "respawn_delay": ("2.0", "seconds before a respawn"),
    "sigterm_timeout": ("15", "seconds launch waits after SIGINT before SIGTERM when it stops the node (launch's "
                              "default 5 s is too short on a loaded machine: measured 6.5 s on a busy 2-core one)"),
}
"""Launch arguments every node launch file has: argument -> (default, description)."""


def _bool(name: str, text: str) -> bool:
    word = str(text).strip().lower()
    if word not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
    return word in ("true", "1", "yes", "on")


def node_options(values: Mapping[str, str]) -> dict[str, Any]:
    """The common arguments' values, checked -> {'parameters': node parameter overrides, 'log_level',
    'respawn', 'respawn_delay', 'sigterm_timeout'} (ValueError naming a bad one)."""
    v = {name: str(values.get(name, default)) for name, (default, _) in NODE_ARGUMENTS.items()}
    parameters = {name: _bool(name, v[name]) for name in ("use_sim_time", "autostart") if v[name].strip()}
    if v["log_level"].lower() not in LOG_LEVELS:
        raise ValueError(f"launch argument log_level must be one of {', '.join(LOG_LEVELS)}, got {v['log_level']!r}")
    seconds = {}
    for name in ("respawn_delay", "sigterm_timeout"):
        try:
            seconds[name] = float(v[name])
        except ValueError:
            seconds[name] = -1.0
        if seconds[name] < 0:
            raise ValueError(f"launch argument {name} must be a number of seconds >= 0, got {v[name]!r}")
    return {"parameters": parameters, "log_level": v["log_level"].lower(), "respawn": _bool("respawn", v["respawn"]),
            "respawn_delay": seconds["respawn_delay"], "sigterm_timeout": v["sigterm_timeout"]}


def profile_env(share_dir: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that sends or receives large frames: the packaged profile, unless the
    user or a parent launch file chose one (launch keeps its environment in os.environ)."""
    env = os.environ if environ is None else environ
    if any(env.get(var) for var in PROFILE_ENV_VARS):
        return {}
    return {var: os.path.join(share_dir, FASTDDS_PROFILE) for var in PROFILE_ENV_VARS}


def plain_arguments(resolved: Mapping[str, Any]) -> list[str]:
    """`--ros-args ...` for a resolved launch (namespace, params_file, remaps, overrides, options): what
    the launch file's Node runs, as a plain command line."""
    r = resolved
    args = ["--ros-args", "--params-file", r["params_file"]]
    if r["namespace"]:
        args += ["-r", "__ns:=/" + r["namespace"].strip("/")]
    for src, dst in r["remaps"]:
        args += ["-r", f"{src}:={dst}"]
    for name, value in {**r["options"]["parameters"], **r["overrides"]}.items():
        text = f"[{','.join(value)}]" if isinstance(value, list) else str(value).lower() if isinstance(value, bool) \
            else str(value)
        args += ["-p", f"{name}:={text}"]
    return args + ["--log-level", r["options"]["log_level"]]


def declare(arguments: dict[str, tuple[str, str]]) -> list[Any]:
    """DeclareLaunchArgument for each `name -> (default, description)`."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in arguments.items()]


def values(context: Any, arguments: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The launch arguments' values in a launch context ('' where unset)."""
    return {name: context.launch_configurations.get(name, "") for name in arguments}


def scoped(actions: list[Any]) -> Any:
    """The launch file's actions in a scoped group: its argument values and settings end with it."""
    from launch.actions import GroupAction

    return GroupAction(actions, scoped=True)


def node_action(share_dir: str, *, executable: str, name: str, namespace: str, params_file: str,
                overrides: dict[str, Any], remaps: list[tuple[str, str]], options: dict[str, Any]) -> Any:
    """The launch_ros Node for the segmentation node with these settings."""
    from launch_ros.actions import Node

    return Node(package="msseg_ros", executable=executable, name=name, namespace=namespace,
                parameters=[params_file, {**options["parameters"], **overrides}], remappings=remaps,
                ros_arguments=["--log-level", options["log_level"]], output="screen",
                respawn=options["respawn"], respawn_delay=options["respawn_delay"],
                sigterm_timeout=options["sigterm_timeout"], additional_env=profile_env(share_dir))


def node_launch_description(package: str, arguments: dict[str, tuple[str, str]],
                            resolve: Callable[[dict[str, str], str], dict], executable: str, name: str) -> Any:
    """A launch file's whole description: its arguments and one node, built by `resolve(values, share)`
    once the arguments' values are known, all in one scoped group."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import OpaqueFunction

    share = get_package_share_directory(package)

    def make_node(context: Any) -> list[Any]:
        r = resolve(values(context, arguments), share)
        return [node_action(share, executable=executable, name=name, namespace=r["namespace"],
                            params_file=r["params_file"], overrides=r["overrides"], remaps=r["remaps"],
                            options=r["options"])]

    return LaunchDescription([scoped([*declare(arguments), OpaqueFunction(function=make_node)])])
