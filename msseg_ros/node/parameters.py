"""The segmentation node's parameters: declared with descriptors, bad values reworded into one clear
line (ConfigError), and the start-up settings read and checked on configure.

Start-up parameters (STARTUP_PARAMETERS) are read on configure and can be changed only while the node
is unconfigured (a lifecycle manager may fix one after a failed configure and try again); the others
are changeable at run time. Parameters that depend on the checkpoint (road_classes, class_names,
class_colors) or on the cameras (`<camera>.<road-grid parameter>`) are declared by configure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterException,
    ParameterUninitializedException,
)
from rclpy.parameter import Parameter

from msseg_core.checkpoint import CheckpointError, CheckpointMeta, read_meta
from msseg_core.runtime.engines.torch_ort import default_threads
from msseg_core.runtime.segmenter import BACKENDS, PRECISIONS, resolve_device
from msseg_ros.node.cameras import auto_streams, check_camera_names, check_camera_parameters
from msseg_ros.node.rclpy_private import parameter_overrides
from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS, ROAD_GRID_DESCRIPTIONS
from msseg_ros.transport.graph import one_line
from msseg_ros.transport.image_codec import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import torch

TRANSPORTS = ("raw", "compressed")
TTA_MODES = ("none", "flip")
STARTUP_PARAMETERS = ("checkpoint", "device", "precision", "backend", "threads", "input_width", "input_height",
                      "input_transport", "max_input_pixels", "pipelined", "cameras", "max_batch",
                      "streams", "tta")
"""Read on configure; they can be changed only while the node is unconfigured."""
_STARTUP = " Start-up: changeable only while the node is unconfigured."


class ConfigError(ValueError):
    """A start-up parameter or checkpoint the node cannot run with; main() prints it as one line."""


def descriptor(description: str, ptype: int, read_only: bool = False, constraints: str = "",
               **ranges: Any) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, type=ptype, read_only=read_only,
                               additional_constraints=constraints, **ranges)


def declare(node: Any, name: str, default: Any, desc: ParameterDescriptor, **kwargs: Any) -> Any:
    """node.declare_parameter, with rclpy's type and range errors reworded into one clear line."""
    try:
        return node.declare_parameter(name, default, desc, **kwargs).value
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        given = parameter_overrides(node).get(name)
        value = given.value if given is not None else default
        if isinstance(exc, InvalidParameterTypeException):
            expected = Parameter.Type(desc.type).name.lower().replace("_", " ")
            raise ConfigError(f"parameter {name}: expected type {expected}, got {value!r}") from None
        limits = desc.floating_point_range or desc.integer_range
        if limits:
            raise ConfigError(f"parameter {name}: {value!r} is outside [{limits[0].from_value}, "
                              f"{limits[0].to_value}]") from None
        raise ConfigError(f"parameter {name}: {one_line(exc)}") from None


def declare_node_parameters(node: Any) -> None:
    """Every parameter that depends neither on the checkpoint nor on the cameras."""
    p = Parameter.Type
    declare(node, "checkpoint", "", descriptor(
        "Model checkpoint: a zoo name, a .safetensors file, or an .onnx from msseg-export; '' = the packaged "
        "CamVid model." + _STARTUP, p.STRING))
    declare(node, "device", "auto", descriptor(
        "Inference device; auto = CUDA when available, else CPU." + _STARTUP, p.STRING,
        constraints="auto, cpu, cuda or cuda:N"))
    declare(node, "precision", "fp32", descriptor(
        "Inference precision: fp16 needs CUDA; int8 runs the calibrated model from msseg-quantize." + _STARTUP,
        p.STRING, constraints=", ".join(PRECISIONS)))
    size_range = [IntegerRange(from_value=0, to_value=8192, step=1)]
    declare(node, "input_width", 0, descriptor(
        "Network input width in pixels; 0 = the checkpoint's." + _STARTUP, p.INTEGER, integer_range=size_range))
    declare(node, "input_height", 0, descriptor(
        "Network input height in pixels; 0 = the checkpoint's." + _STARTUP, p.INTEGER, integer_range=size_range))
    declare(node, "backend", "auto", descriptor(
        "Inference engine; auto = the fastest installed engine for the device and precision that agrees with "
        "PyTorch, timed once at start-up and cached." + _STARTUP, p.STRING, constraints=", ".join(BACKENDS)))
    declare(node, "threads", 0, descriptor(
        "CPU inference threads (process-wide); 0 = every core this process may use." + _STARTUP, p.INTEGER,
        integer_range=[IntegerRange(from_value=0, to_value=1024, step=1)]))
    declare(node, "input_transport", "raw", descriptor(
        "raw: subscribe `image` (sensor_msgs/Image); compressed: `image/compressed` (CompressedImage)." + _STARTUP,
        p.STRING, constraints="raw or compressed"))
    declare(node, "max_input_pixels", DEFAULT_MAX_PIXELS, descriptor(
        "Frames with more pixels (width x height) are rejected and counted as invalid." + _STARTUP, p.INTEGER,
        integer_range=[IntegerRange(from_value=1, to_value=2**31 - 1, step=1)]))
    declare(node, "pipelined", True, descriptor(
        "Post-process and publish frame N in a second thread while the network runs on frame N+1 (rate: max "
        "instead of sum of the two stages; same latency). false = one thread does both." + _STARTUP, p.BOOL))
    declare(node, "cameras", p.STRING_ARRAY, descriptor(
        "Camera names: each camera's topics under <name>/ and its road-grid parameters as <name>.<parameter>; one "
        "model serves them all. Empty = one camera on the plain topic names." + _STARTUP, p.STRING_ARRAY))
    declare(node, "max_batch", 0, descriptor(
        "Most frames (one per camera) in one forward pass; 0 = one from every camera with a frame pending."
        + _STARTUP, p.INTEGER, integer_range=[IntegerRange(from_value=0, to_value=1024, step=1)]))
    declare(node, "streams", 0, descriptor(
        "Frames in the network at the same time, each in its own worker thread with `threads` threads, one model "
        "in memory (several cameras keep several cores busy); 0 = one per camera, at most 2 x the usable cores "
        "(1 for one camera, with threads 0, or on CUDA)." + _STARTUP, p.INTEGER,
        integer_range=[IntegerRange(from_value=0, to_value=64, step=1)]))
    declare(node, "tta", "none", descriptor(
        "Test-time augmentation: flip = also run the mirrored frame and average the logits (better masks, about "
        "twice the network's time); none = off." + _STARTUP, p.STRING, constraints="none or flip"))
    declare(node, "points_step", 4, descriptor(
        "Ground points and the semantic/* outputs sample every points_step-th pixel of each row and column "
        "(run-time)", p.INTEGER, integer_range=[IntegerRange(from_value=1, to_value=64, step=1)]))
    declare(node, "fused_grid_max_age", 0.5, descriptor(
        "With cameras: a camera's grid counts in the vehicle's road_grid only while its image is at most this many "
        "seconds older than the newest one (run-time)", p.DOUBLE,
        floating_point_range=[FloatingPointRange(from_value=0.01, to_value=60.0, step=0.0)]))
    declare(node, "autostart", True, descriptor(
        "Configure and activate at start-up; false = wait for a lifecycle manager", p.BOOL, read_only=True))
    seconds = [FloatingPointRange(from_value=0.0, to_value=3600.0, step=0.0)]
    declare(node, "input_timeout", 5.0, descriptor(
        "Diagnostics WARN for a camera that sent no frame for this many seconds; 0 = never (run-time)",
        p.DOUBLE, floating_point_range=seconds))
    declare(node, "startup_grace", 10.0, descriptor(
        "Seconds after activation before a camera that has sent nothing yet is WARN (run-time)", p.DOUBLE,
        floating_point_range=seconds))
    declare(node, "overlay_alpha", 0.5, descriptor(
        "Weight of the class colours in `overlay` (0 = frame only, 1 = colours only); changeable at run time",
        p.DOUBLE, floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)]))
    try:  # top level: the single camera's, and the values every camera of `cameras` starts from
        declare_road_grid_parameters(node)
    except ParameterException as exc:
        raise ConfigError(one_line(exc)) from None


def value(node: Any, name: str) -> Any:
    """A parameter's value; [] for `cameras` when it was not given (or given as [])."""
    try:
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return []


def check_road_classes(names: Sequence[str], known: Sequence[str]) -> str:
    if not names:
        return "must name at least one class"
    unknown = [n for n in names if n not in known]
    if unknown:
        return f"unknown classes {unknown}; classes are {list(known)}"
    return ""


@dataclass(frozen=True)
class StartupSettings:
    """The start-up parameters, checked: what configure builds the node from."""

    checkpoint: str  # the file
    meta: CheckpointMeta
    device: torch.device
    precision: str
    backend: str
    transport: str
    cameras: list[str]
    input_size: tuple[int, int] | None
    threads: int
    max_input_pixels: int
    max_batch: int
    pipelined: bool
    streams: int  # resolved: >= 1
    tta: str
    notes: list[str]  # worth a log line (e.g. cameras of the params file that are not launched)


def read_startup(node: Any, parameter_names: Sequence[str]) -> StartupSettings:
    """The start-up parameters of `node`, checked (ConfigError naming the parameter); also refuses
    per-camera parameters given for a camera that is not in `cameras`."""
    get = lambda name: value(node, name)  # noqa: E731
    transport, precision, backend = get("input_transport"), get("precision"), get("backend")
    if transport not in TRANSPORTS:
        raise ConfigError(f"parameter input_transport must be raw or compressed, got {transport!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"parameter precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"parameter backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if get("tta") not in TTA_MODES:
        raise ConfigError(f"parameter tta must be one of {', '.join(TTA_MODES)}, got {get('tta')!r}")
    cameras = list(get("cameras"))
    if problem := check_camera_names(cameras, {name.split(".")[0] for name in parameter_names}):
        raise ConfigError(f"parameter cameras: {problem}")
    problem, notes = check_camera_parameters(parameter_overrides(node), cameras)
    if problem:
        raise ConfigError(problem)
    try:
        device = resolve_device(get("device"))
    except ValueError as exc:
        raise ConfigError(f"parameter device: {one_line(exc)}") from None
    try:
        path, meta = read_meta(get("checkpoint"))  # a zoo name, a path, or '' for the default
    except CheckpointError as exc:
        raise ConfigError(f"parameter checkpoint: {one_line(exc)}") from None
    width, height = get("input_width"), get("input_height")
    input_size = (height or meta.input_size[0], width or meta.input_size[1]) if width or height else None
    streams = get("streams") or auto_streams(len(cameras), get("threads"), device.type, default_threads())
    return StartupSettings(str(path), meta, device, precision, backend, transport, cameras, input_size, get("threads"),
                           get("max_input_pixels"), get("max_batch"), bool(get("pipelined")), streams,
                           get("tta"), notes)


def declare_road_grid_parameters(node: Any, prefix: str = "", defaults: dict[str, Any] | None = None
                                 ) -> dict[str, Any]:
    """Declare every road grid parameter on `node` (with descriptions) and return their values by
    unprefixed name. prefix: e.g. 'front.' for one camera of several; defaults: values to start from
    instead of ROAD_GRID_DEFAULTS (a camera starts from the node's top-level values)."""
    values = {}
    for name, default in ROAD_GRID_DEFAULTS.items():
        descriptor = ParameterDescriptor(description=ROAD_GRID_DESCRIPTIONS[name])
        if isinstance(default, float):
            descriptor.dynamic_typing = True  # accept `camera_pitch: 0` from YAML as well as 0.0
        if not node.has_parameter(prefix + name):
            node.declare_parameter(prefix + name, (defaults or ROAD_GRID_DEFAULTS)[name], descriptor)
        values[name] = node.get_parameter(prefix + name).value
    return values
