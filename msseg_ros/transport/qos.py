"""QoS profiles of the segmentation node and the Fast DDS profile that lets large frames through.

Input: SensorDataQoS (best effort, keep last 5) so both reliable and best-effort cameras connect
(a reliable subscriber would refuse a best-effort publisher). Image and point outputs: reliable with a
small depth, so reliable and best-effort subscribers both receive them and a slow subscriber holds at
most two stale frames. Map-like outputs (road_grid, label_info): reliable and TRANSIENT LOCAL, depth 1,
as Nav2's map consumers expect: KeepoutFilter/SpeedFilter subscribe to their mask reliable + transient
local (hard-coded), StaticLayer transient local unless `map_subscribe_transient_local: false`; a
transient-local publisher serves volatile subscribers too, and a late subscriber gets the latest grid at
once. History, depth, reliability (and for the inputs and map-like outputs durability) of every topic can
be overridden at start-up through the standard `qos_overrides.<topic>.<publisher|subscription>.<policy>`
parameters: reliable + transient_local input, from a transient_local camera, gets the frames the camera
sent before the node's side of the match completed (msseg-demo's replay of a short recording).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSPolicyKind,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions

from msseg_ros.transport.graph import package_file


# Functions, not constants: rclpy applies QoS overrides by mutating the profile it is given.
def input_qos() -> QoSProfile:
    """SensorDataQoS: best effort, keep last 5, volatile."""
    return QoSProfile(history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
                      reliability=qos_profile_sensor_data.reliability, durability=qos_profile_sensor_data.durability)


def output_qos() -> QoSProfile:
    """Reliable, keep last 2, volatile: reaches reliable and best-effort subscribers alike."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def map_qos() -> QoSProfile:
    """Reliable, transient local, keep last 1: what Nav2's map-like subscribers ask for (module docstring)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def overridable(durability: bool = False) -> QoSOverridingOptions:
    """Which policies `qos_overrides.*` parameters may change: history, depth, reliability, and
    durability for the map-like outputs (a user may need volatile for an old consumer)."""
    kinds = [QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY]
    if durability:
        kinds.append(QoSPolicyKind.DURABILITY)
    return QoSOverridingOptions(policy_kinds=kinds)


def diagnostics_qos() -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)


FASTDDS_PROFILE_NAME = "fastdds_large_images.xml"
# Fast DDS 2.x (Jazzy) reads the first, 3.x (Kilted on) the second; we set both.
PROFILE_ENV_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def packaged_fastdds_profile() -> Path | None:
    """The shipped profile: the colcon install's share dir, else the source tree's config/."""
    return package_file(f"config/{FASTDDS_PROFILE_NAME}")


def apply_fastdds_profile(environ: MutableMapping[str, str] | None = None) -> tuple[str | None, str]:
    """Point Fast DDS at the packaged large-image profile unless the user chose a profile file.

    Must run before rclpy.init (Fast DDS reads the variables when the participant is created).
    Returns (profile path or None, how it was chosen: 'user', 'packaged' or 'missing').
    """
    env = os.environ if environ is None else environ
    for var in PROFILE_ENV_VARS:
        if env.get(var):
            return env[var], "user"
    path = packaged_fastdds_profile()
    if path is None:
        return None, "missing"
    for var in PROFILE_ENV_VARS:
        env[var] = str(path)
    return str(path), "packaged"
