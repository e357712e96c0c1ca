"""The segmentation node: camera frames in, label / colour / overlay / confidence / road images out.

A managed (lifecycle) node and a thin layer over `msseg_core.runtime.segmenter.Segmenter`: it owns parameters,
the lifecycle, QoS, a latest-frame worker, publishers and diagnostics, and no image maths (decoding
lives in `image_codec`, everything else in `Segmenter`). Run `segmentation_node --ros-args -p
checkpoint:=model.safetensors`.

Lifecycle: configure loads the model and creates publishers and subscriptions; activate starts the
worker threads and publishing; deactivate stops both (a frame that arrives is only counted as
`ignored`); cleanup frees the model (and GPU memory); shutdown works from any state. With
`autostart` (default true) the node configures and activates itself at start-up, so `ros2 run` and the
launch files behave as a plain node; with `autostart:=false` a lifecycle manager drives it through the
standard services (`~/change_state`, `~/get_state`, ...). A failed configure answers FAILURE and leaves
the node unconfigured (a manager may fix a start-up parameter and configure again); with autostart it
ends the process with one error line (exit status 2).

Frames: the image subscriptions are raw and taken by a thread of their own (direct_take.py), which
only drops the serialized message into its camera's one-slot mailbox. A worker thread takes the newest
frame of every camera with one pending (round robin, at most `max_batch`), deserializes them
(`rosbags`, see cdr.py) and runs the network on them as one batch, so a slow network never builds a
queue and a frame replaced before the worker gets to it is counted as dropped, having cost no more
than a copy of its bytes. With `pipelined` (default
on) a publisher thread post-processes frame N at full resolution (`Segmenter.postprocess`), encodes and
publishes it while the worker runs the network on the next frames; they hand over through a one-slot
queue. With several cameras, `streams` workers (one Segmenter replica each, one model in memory) run
frames of different cameras at the same time, each publishing its own; a camera is in one worker at a
time, so its outputs keep their order. Every output carries its input's header and resolution.
Cameras (`cameras`), mailboxes, threads and counters: `cameras` and `pipeline`; what the diagnostics
say: `health`.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lifecycle_msgs.srv import ChangeState
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import InvalidQosOverridesError
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from msseg_core.checkpoint import CheckpointError
from msseg_core.cli.common import configure_process
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter
from msseg_ros.node import direct_take, health
from msseg_ros.node.cameras import Camera
from msseg_ros.node.direct_take import DirectTake, NotByExecutor
from msseg_ros.node.outputs import FrameSettings, VehicleGrid, publish_frame_outputs, wanted
from msseg_ros.node.parameters import (
    STARTUP_PARAMETERS,
    ConfigError,
    check_road_classes,
    declare,
    declare_node_parameters,
    declare_road_grid_parameters,
    descriptor,
    read_startup,
    value,
)
from msseg_ros.node.pipeline import CameraMailboxes, EntityGate, FrameThreads, InferredFrame
from msseg_ros.node.rclpy_private import available_transitions, current_state, guard_change_state
from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS, RoadGridBuilder
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import typestore
from msseg_ros.transport.graph import one_line, run_node
from msseg_ros.transport.image_codec import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    ImageDecodeError,
    decode_serialized,
)
from msseg_ros.transport.messages import label_info, label_info_available
from msseg_ros.transport.qos import apply_fastdds_profile, diagnostics_qos, input_qos, map_qos, output_qos, overridable

NODE_NAME = "msseg_node"
OUTPUT_ENCODINGS = topics.OUTPUT_ENCODINGS
assert set(OUTPUT_ENCODINGS) == set(OUTPUTS) == set(topics.OUTPUTS), "every Segmenter output needs a topic"
LEVELS = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR)  # health.OK, WARN, ERROR
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def _failure_message(exc: Exception) -> str:
    if isinstance(exc, ConfigError | ParameterException | InvalidQosOverridesError | CheckpointError | ValueError
                  | RuntimeError):
        return one_line(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


class SegmentationNode(LifecycleNode):
    """Segments every newest camera frame; see the module docstring and config/camvid.yaml."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.cameras: list[Camera] = []
        self._segmenters: list[Segmenter] = []  # one per stream (configured); the first is `segmenter`
        self.last_error = ""  # why the last configure failed
        self._active = threading.Event()  # read by the frame threads, set and cleared by the lifecycle
        self._active_since = time.monotonic()
        self._gate = EntityGate()  # the frame threads touch publishers only while they exist
        self.join_timeout = 10.0  # seconds deactivate waits for a frame in flight (then logs, never blocks)
        self._declaring = False  # our own declarations pass the parameter callbacks untouched
        self._configured_names: list[str] = []  # parameters configure declared and cleanup undeclares
        self._settings_lock = threading.Lock()  # run-time parameter changes vs. a frame's snapshot of them
        self._frame_settings: FrameSettings | None = None
        self.vehicle: VehicleGrid | None = None  # the fused road_grid (with cameras)
        self.label_info_pub: Any = None
        self._mailboxes: CameraMailboxes[tuple[bytes, float]] = CameraMailboxes(0)
        self._threads: FrameThreads | None = None  # while active
        self._direct: DirectTake | None = None  # takes the image subscriptions' frames (configured)
        self._subscriptions_made: list[Any] = []
        self.diagnostics_pub: Any = None
        self.diagnostics_timer: Any = None
        self._engine_facts: dict[str, str] = {}
        guard_change_state(self, self._change_state_request)
        try:
            declare_node_parameters(self)
        except ConfigError:
            self.destroy_node()
            raise
        self.add_on_set_parameters_callback(self.validate_parameters_callback)
        self.add_post_set_parameters_callback(self.apply_parameters_callback)
        self.autostart = bool(self.get_parameter("autostart").value)
        if self.autostart:
            for step in (self.trigger_configure, self.trigger_activate):
                if step() != SUCCESS:
                    self.destroy_node()
                    raise ConfigError(self.last_error or f"{step.__name__} failed")

    # -- parameters ----------------------------------------------------------------------------
    def _declare_for_configure(self, name: str, default: Any, descriptor: ParameterDescriptor, **kwargs: Any) -> Any:
        """A parameter that exists while the node is configured (cleanup undeclares it)."""
        if not self.has_parameter(name):
            declare(self, name, default, descriptor, **kwargs)
            self._configured_names.append(name)
        return self.get_parameter(name).value

    def _camera_of(self, name: str) -> tuple[Camera, str] | None:
        """(camera, road grid parameter) a parameter name belongs to, or None."""
        for camera in self.cameras:
            prefix = camera.parameter("")
            if name.startswith(prefix) and name[len(prefix):] in ROAD_GRID_DEFAULTS:
                return camera, name[len(prefix):]
        return None

    def validate_parameters_callback(self, params: list[Parameter]) -> SetParametersResult:
        """Reject bad values before anything changes (read-only ones rclpy rejects itself)."""
        if self._declaring:
            return SetParametersResult(successful=True)
        state = current_state(self)
        per_camera: dict[Camera, dict[str, Any]] = {}
        top: dict[str, Any] = {}  # road-grid values while unconfigured: what the cameras will start from
        for param in params:
            if param.name in STARTUP_PARAMETERS and state != "unconfigured":
                return SetParametersResult(successful=False, reason=(
                    f"{param.name} is read on configure: change it while the node is unconfigured (it is {state})"))
            if param.name in ("road_classes", "ground_classes") and self.segmenter is not None:
                if param.type_ != Parameter.Type.STRING_ARRAY:
                    return SetParametersResult(successful=False, reason=f"{param.name} must be a string array")
                problem = check_road_classes(list(param.value), self.segmenter.class_names)
                if problem:
                    return SetParametersResult(successful=False, reason=f"{param.name}: {problem}")
            elif param.name == "overlay_alpha" and (param.type_ != Parameter.Type.DOUBLE
                                                    or not 0.0 <= param.value <= 1.0):
                reason = f"overlay_alpha must be a double in [0, 1], got {param.value!r}"
                return SetParametersResult(successful=False, reason=reason)
            elif param.name in ROAD_GRID_DEFAULTS and self.cameras and self.cameras[0].name:
                return SetParametersResult(successful=False, reason=(
                    f"with cameras set, {param.name} is per camera: set <camera>.{param.name} (the top-level "
                    "values, the vehicle road_grid's extent among them, are read on configure)"))
            elif (owner := self._camera_of(param.name)) is not None:
                per_camera.setdefault(owner[0], {})[owner[1]] = param.value
            elif param.name in ROAD_GRID_DEFAULTS:
                top[param.name] = param.value
        if top and (reason := RoadGridBuilder().check_params(
                **{**{n: self.get_parameter(n).value for n in ROAD_GRID_DEFAULTS}, **top})):
            return SetParametersResult(successful=False, reason=reason)
        for camera, updates in per_camera.items():
            if reason := camera.road_grid.check_params(**updates):
                prefix = f"camera {camera.name}: " if camera.name else ""
                return SetParametersResult(successful=False, reason=prefix + reason)
        return SetParametersResult(successful=True)

    def apply_parameters_callback(self, params: list[Parameter]) -> None:
        """Apply values that passed validation; they hold from the next frame to be post-processed."""
        if self._declaring or self.segmenter is None:
            return
        with self._settings_lock:
            per_camera: dict[Camera, dict[str, Any]] = {}
            for param in params:
                if param.name == "road_classes":
                    for segmenter in self._segmenters:
                        segmenter.set_road_classes(list(param.value))
                    self.get_logger().info(f"road_classes = {list(param.value)}")
                elif param.name in ("overlay_alpha", "ground_classes", "points_step"):
                    self.get_logger().info(f"{param.name} = {param.value}")
                elif param.name == "fused_grid_max_age" and self.vehicle is not None:
                    self.vehicle.fused.max_age_ns = int(float(param.value) * 1e9)
                elif param.name in ("input_timeout", "startup_grace"):
                    self.health_limits = self._health_limits()
                elif (owner := self._camera_of(param.name)) is not None:
                    per_camera.setdefault(owner[0], {})[owner[1]] = param.value
            for camera, updates in per_camera.items():
                camera.road_grid.set_params(**updates)
                self.get_logger().info(f"road parameters{' of ' + camera.name if camera.name else ''}: {updates}")
            self._frame_settings = self._read_frame_settings({p.name: p.value for p in params})

    # -- lifecycle -----------------------------------------------------------------------------
    def _change_state_request(self, handle, request: ChangeState.Request, response: ChangeState.Response):
        """~/change_state, refusing with a clear log line a transition the current state does not have
        (rclpy would raise inside the executor and take the process down)."""
        state = current_state(self)
        possible = available_transitions(self)  # id -> label
        wanted = request.transition.label or str(request.transition.id)
        if not (request.transition.label in possible.values() if request.transition.label
                else request.transition.id in possible):
            self.get_logger().error(f"lifecycle: cannot '{wanted}' in state '{state}'; possible: "
                                    f"{', '.join(sorted(set(possible.values()))) or 'none'}")
            response.success = False
            return response
        return handle(request, response)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model, make every camera's subscriptions and publishers; on failure undo it all."""
        try:
            self._configure()
        except Exception as exc:
            self.last_error = _failure_message(exc)
            self._release()
            if not self.autostart:  # with autostart, main() prints it as the one error line
                self.get_logger().error(f"configure failed: {self.last_error}")
            return FAILURE
        self.last_error = ""
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # lifecycle publishers first: the worker may publish at once
        self._discard_pending()
        self._active_since = time.monotonic()
        # publish: looked up per frame, so a replaced publish_frame (tests) is the one used
        self._threads = FrameThreads(self._mailboxes, self.infer_frames, lambda frame: self.publish_frame(frame),
                                     self._frame_failed, lambda camera: camera.stats.count("dropped"),
                                     self.context.ok, self.pipelined, self._batch_limit(), len(self._segmenters),
                                     lambda indices, exc: self._inference_failed([self.cameras[i] for i in indices],
                                                                                 exc))
        self._threads.start()
        self._active.set()
        if self.label_info_pub is not None:
            self.label_info_pub.publish(label_info(self.segmenter.class_names, self.get_clock().now().to_msg()))
        self.get_logger().info("active: segmenting")
        return result

    def _batch_limit(self) -> int:
        """max_batch, or with several streams and max_batch 0 an even share of the cameras per stream (one
        worker taking every pending camera would leave the other streams nothing to run)."""
        streams = len(self._segmenters)
        if self.max_batch or streams <= 1:
            return self.max_batch
        return -(-len(self.cameras) // streams)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self.get_logger().info("inactive: frames are ignored until activated again")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("unconfigured: model and subscriptions released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return SUCCESS  # back to unconfigured

    def _stop_processing(self) -> None:
        """Stop taking frames, let the worker and publisher threads finish their frame, and count what
        was still pending as dropped."""
        self._active.clear()
        if self._threads is not None:
            stuck = self._threads.stop(self.join_timeout)
            if stuck:
                self.get_logger().warning(
                    f"{', '.join(stuck)} still busy with a frame {self.join_timeout:g} s after being asked to stop: "
                    "that frame will not be published (the thread ends when its frame does)")
            self._threads = None
        self._discard_pending()

    def _discard_pending(self) -> None:
        for index, _ in self._mailboxes.drain():
            self.cameras[index].stats.count("dropped")

    def _configure(self) -> None:
        settings = read_startup(self, self._declared_names())
        for note in settings.notes:
            self.get_logger().info(note)
        self.device, meta = settings.device, settings.meta
        self._declaring = True
        try:
            road = self._declare_for_configure("road_classes", list(meta.road_classes), descriptor(
                "Classes that form `road_mask` (names from class_names); changeable at run time",
                Parameter.Type.STRING_ARRAY))
            ground = self._declare_for_configure("ground_classes", list(meta.ground), descriptor(
                "Classes that lie on the ground plane (road, pavement, ...): ground points and semantic/* stop at "
                "the first other class of each image column (default: the checkpoint's); changeable at run time",
                Parameter.Type.STRING_ARRAY))
        finally:
            self._declaring = False
        for name, names in (("road_classes", road), ("ground_classes", ground)):
            if problem := check_road_classes(names, meta.class_names):
                raise ConfigError(f"parameter {name}: {problem}")
        configure_process(settings.threads or None, self.device)  # the node is the program: PyTorch's pool
        try:
            first = Segmenter.from_checkpoint(
                settings.checkpoint, device=str(self.device), precision=settings.precision,
                input_size=settings.input_size, backend=settings.backend, threads=settings.threads or None,
                streams=settings.streams, tta=settings.tta)
            self._segmenters = [first] + [first.replica() for _ in range(settings.streams - 1)]
            for segmenter in self._segmenters:
                segmenter.set_road_classes(road)
            if len(self._segmenters) > 1:  # each engine request's first run (allocations) one at a time, here
                blank = np.zeros((*self.segmenter.input_size, 3), np.uint8)
                for segmenter in self._segmenters:
                    segmenter.predict(blank)
        except (CheckpointError, ValueError) as exc:
            raise ConfigError(f"cannot load the model: {one_line(exc)}") from None
        self.checkpoint_path, self.model_name = settings.checkpoint, meta.model
        self._engine_facts = health.engine_facts(self.segmenter.describe())
        self._declare_class_parameters()
        self.max_input_pixels, self.max_batch, self.pipelined = (settings.max_input_pixels, settings.max_batch,
                                                                 settings.pipelined)
        self.health_limits = self._health_limits()
        transport = settings.transport
        self._make_cameras(settings.cameras)
        self._frame_settings = self._read_frame_settings()
        self._input_type = COMPRESSED_TYPE if transport == "compressed" else IMAGE_TYPE
        for camera in self.cameras:
            self._make_camera_entities(camera, transport)
        self._make_node_entities(settings.cameras)
        self._mailboxes = CameraMailboxes(len(self.cameras))
        self._gate.open()
        typestore()  # the message definitions are parsed here (~0.3 s), not when the first frame waits
        if direct_take.available():
            self._direct = DirectTake(self.context, [c.image_sub for c in self.cameras],
                                      lambda index, msg: self.image_callback(msg, self.cameras[index]))
            self._direct.start()
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, diagnostics_qos())
        # A steady clock: diagnostics go on under use_sim_time before /clock runs (stamps use the node clock).
        self.diagnostics_timer = self.create_timer(1.0, self.diagnostics_callback,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))
        h, w = self.segmenter.input_size
        subscribed = ", ".join(c.image_sub.topic_name for c in self.cameras)
        self.get_logger().info(
            f"model {meta.model} ({meta.num_classes} classes) from {settings.checkpoint} on {self.device} "
            f"{settings.precision}, "
            f"backend {self.segmenter.backend}, network input {w}x{h}, {settings.streams} stream(s); "
            f"subscribed to {subscribed} ({transport})")

    def _health_limits(self) -> health.HealthLimits:
        return health.HealthLimits(float(value(self, "input_timeout")), float(value(self, "startup_grace")))

    def _declare_class_parameters(self) -> None:
        """class_names / class_colors: read-only facts of the checkpoint, declared by the first configure;
        a later configure must load a checkpoint with the same classes (clients may have read them)."""
        p = Parameter.Type
        names = self.segmenter.class_names
        colors = ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in self.segmenter.palette]
        if self.has_parameter("class_names"):
            if list(self.get_parameter("class_names").value) != names:
                raise ConfigError(f"checkpoint classes {names} differ from this node's class_names "
                                  f"{list(self.get_parameter('class_names').value)}: restart the node to change them")
            return
        # ignore_override: a YAML cannot make them lie about the model.
        self.declare_parameter("class_names", names, descriptor(
            "What label id i means: class_names[i] (from the checkpoint)", p.STRING_ARRAY, read_only=True),
            ignore_override=True)
        self.declare_parameter("class_colors", colors, descriptor(
            "Colour of class i in color_mask / overlay, as '#rrggbb' strings (from the checkpoint)",
            p.STRING_ARRAY, read_only=True), ignore_override=True)

    def _make_cameras(self, names: list[str]) -> None:
        """One Camera per name (or the single unnamed one), with its road-grid parameters."""
        top = {name: self.get_parameter(name).value for name in ROAD_GRID_DEFAULTS}
        for index, name in enumerate(names or [""]):
            prefix = f"{name}." if name else ""
            before = self._declared_names()
            self._declaring = True
            try:
                values = declare_road_grid_parameters(self, prefix, top)
            finally:
                self._declaring = False
                self._configured_names += [n for n in self._declared_names() if n not in before]
            try:
                road_grid = RoadGridBuilder(**values)
            except ValueError as exc:
                raise ConfigError(f"{'camera ' + name + ': ' if name else ''}{one_line(exc)}") from None
            self.cameras.append(Camera(name, index, road_grid))

    def _make_camera_entities(self, camera: Camera, transport: str) -> None:
        # Input durability is overridable too: a replay that must not lose its first frames to a late match
        # asks for reliable + transient_local input (msseg-demo does, for its own camera).
        qos_options = overridable(durability=True)
        # raw=True: frames arrive serialized and only the one the worker takes is deserialized (cdr.py).
        callback = lambda msg, camera=camera: self.image_callback(msg, camera)  # noqa: E731
        # Frames are taken by DirectTake's thread, not the executor (direct_take.py says why).
        group = NotByExecutor() if direct_take.available() else None
        if transport == "compressed":
            camera.image_sub = self.create_subscription(
                CompressedImage, camera.topic(topics.COMPRESSED_IMAGE), callback, input_qos(),
                qos_overriding_options=qos_options, raw=True, callback_group=group)
        else:
            camera.image_sub = self.create_subscription(
                Image, camera.topic(topics.IMAGE), callback, input_qos(), qos_overriding_options=qos_options,
                raw=True, callback_group=group)
        camera.camera_info_sub = self.create_subscription(
            CameraInfo, camera.topic(topics.CAMERA_INFO), lambda msg, camera=camera: self.camera_info_callback(
                msg, camera), input_qos(), qos_overriding_options=qos_options)
        self._subscriptions_made += [camera.image_sub, camera.camera_info_sub]
        def publisher(msg_type: Any, name: str, qos: Any = None, durability: bool = False) -> Any:
            return self.create_lifecycle_publisher(msg_type, camera.topic(name), qos or output_qos(),
                                                   qos_overriding_options=overridable(durability))

        camera.output_pubs = {name: publisher(Image, name) for name in topics.OUTPUTS}
        # Ground outputs for planners (outputs.py): the grid is map-like (transient local, as Nav2 subscribes).
        camera.road_grid_pub = publisher(OccupancyGrid, topics.ROAD_GRID, map_qos(), durability=True)
        camera.point_pubs = {name: publisher(PointCloud2, name) for name in topics.POINT_OUTPUTS}
        camera.semantic_pubs = {name: publisher(Image, name) for name in topics.SEMANTIC_IMAGES}

    def _make_node_entities(self, cameras: list[str]) -> None:
        """The vehicle's fused road_grid (with cameras) and the class metadata (where vision_msgs exists)."""
        if cameras:
            top = RoadGridBuilder(**{n: self.get_parameter(n).value for n in ROAD_GRID_DEFAULTS}).params
            pub = self.create_lifecycle_publisher(OccupancyGrid, topics.ROAD_GRID, map_qos(),
                                                  qos_overriding_options=overridable(durability=True))
            self.vehicle = VehicleGrid(cameras, top.geometry, top.grid_frame,
                                       float(value(self, "fused_grid_max_age")), pub)
        if label_info_available():
            from vision_msgs.msg import LabelInfo

            self.label_info_pub = self.create_lifecycle_publisher(LabelInfo, topics.LABEL_INFO, map_qos(),
                                                                  qos_overriding_options=overridable(True))

    def _declared_names(self) -> list[str]:
        return list(self.list_parameters([], 0).names)

    def _read_frame_settings(self, updates: dict[str, Any] | None = None) -> FrameSettings:
        """The run-time parameters of the next frames (`updates`: values being set, not yet readable)."""
        from msseg_core.ground.points import class_lut

        get = lambda name: (updates or {}).get(name, value(self, name))  # noqa: E731
        names = self.segmenter.class_names
        ground = [names.index(n) for n in get("ground_classes")]
        drivable = [names.index(n) for n in get("road_classes")]
        return FrameSettings(float(get("overlay_alpha")), class_lut([*ground, *drivable]), class_lut(drivable),
                             int(get("points_step")))

    def _release(self) -> None:
        """Undo configure (also a failed one): entities, per-configuration parameters, the model. No frame
        thread touches an entity from here on (the gate waits for one that is publishing right now)."""
        while not self._gate.close(timeout=self.join_timeout):
            self.get_logger().warning("a frame thread is still publishing; waiting before releasing its publishers")
        self._stop_direct_take()
        for camera in self.cameras:
            for pub in camera.publishers():
                self.destroy_lifecycle_publisher(pub)
        for pub in (self.vehicle.publisher if self.vehicle is not None else None, self.label_info_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.vehicle = self.label_info_pub = None
        for sub in self._subscriptions_made:
            self.destroy_subscription(sub)
        if self.diagnostics_timer is not None:
            self.destroy_timer(self.diagnostics_timer)
            self.destroy_publisher(self.diagnostics_pub)
        self._subscriptions_made, self.cameras = [], []
        self.diagnostics_pub = self.diagnostics_timer = None
        self._mailboxes = CameraMailboxes(0)
        for name in self._configured_names:
            if self.has_parameter(name):
                self.undeclare_parameter(name)
        self._configured_names = []
        if self.segmenter is not None:
            cuda = self.segmenter.device.type == "cuda"
            self._segmenters = []
            gc.collect()
            if cuda:
                import torch

                torch.cuda.empty_cache()

    # -- callbacks -----------------------------------------------------------------------------
    @property
    def segmenter(self) -> Segmenter | None:
        """The first stream's Segmenter (the only one with one stream); None while unconfigured."""
        return self._segmenters[0] if self._segmenters else None

    @property
    def stats(self):
        """The counters of the first (in a single-camera node: the only) camera."""
        return self.cameras[0].stats

    @property
    def counters(self):
        """Live counters of the first camera; read them through stats.take() for a consistent set."""
        return self.cameras[0].stats.counters

    @property
    def road_grid(self) -> RoadGridBuilder:
        return self.cameras[0].road_grid

    def image_callback(self, msg: bytes, camera: Camera) -> None:
        """Only store the serialized frame: the worker takes the newest one when it is free and
        deserializes it then, so a frame replaced before that costs no more than its bytes. Inactive:
        the frame is only counted as ignored."""
        if not self._active.is_set():
            camera.stats.count("ignored")
            return
        now = time.monotonic()
        camera.stats.count("received", now=now)  # before the worker can see it: pending never goes negative
        if self._mailboxes.put(camera.index, (msg, now)):
            camera.stats.count("dropped")

    def camera_info_callback(self, msg: CameraInfo, camera: Camera) -> None:
        camera.camera_info = msg
        # The grid lookup is rebuilt only when the camera changed; say at once when it became unusable.
        if camera.road_grid.update_camera_info(msg) and camera.road_grid.camera_error:
            where = f" of camera {camera.name}" if camera.name else ""
            self.get_logger().warning(f"no road_grid from this camera_info{where}: {camera.road_grid.camera_error}")

    # -- the worker (threads: pipeline.FrameThreads) ----------------------------------------------
    def _frame_failed(self, camera: Camera, exc: Exception) -> None:
        camera.stats.count("errors", f"frame failed: {type(exc).__name__}: {one_line(exc)}")
        self.get_logger().error(f"frame dropped, {type(exc).__name__}: {one_line(exc)}", throttle_duration_sec=5.0)

    def _inference_failed(self, cameras: list[Camera], exc: Exception) -> None:
        """E.g. CUDA out of memory in the network or the full-resolution postprocess: lose these frames only."""
        if not self.context.ok():  # shutting down, nothing to report
            return
        self._recover_from(exc)
        for camera in cameras:
            camera.stats.count("errors", f"inference failed: {type(exc).__name__}: {one_line(exc)}")
        self.get_logger().error(f"frame dropped, inference failed: {type(exc).__name__}: {one_line(exc)}",
                                throttle_duration_sec=5.0)

    def infer_frames(self, stream: int, items: list[tuple[int, tuple[bytes, float]]]) -> list[InferredFrame]:
        """Decode each camera's frame and run the network on those with a subscribed output, as one
        batch through stream `stream`'s Segmenter; a frame that ends here (invalid, nothing wanted, a
        failure) is counted on its camera."""
        ready = []
        for index, (raw, received_at) in items:
            camera = self.cameras[index]
            try:  # rgb8: a view of the deserialized message's buffer, no copy
                header, rgb = decode_serialized(raw, self._input_type, self.max_input_pixels, copy=False)
                with self._gate.held() as ok:
                    want = wanted(camera, self.vehicle) if ok else None
            except ImageDecodeError as exc:
                camera.stats.count("invalid", f"invalid frame: {exc}")
                self.get_logger().warning(f"invalid frame dropped: {exc}", throttle_duration_sec=5.0)
                continue
            except Exception as exc:  # e.g. MemoryError decoding, or rcl as the process shuts down: that frame only
                if not self.context.ok():
                    return []
                self._frame_failed(camera, exc)
                continue
            if want is None:  # released under us: the node is deactivating
                camera.stats.count("dropped")
                continue
            if not want.anything:
                camera.stats.count("skipped")
                continue
            ready.append((camera, header, rgb, want, received_at))
        if not ready:
            return []
        try:
            t0 = time.monotonic()
            segmenter = self._segmenters[stream]
            if len(ready) == 1:
                nets = [segmenter.run_network(ready[0][2])]
            else:
                nets = segmenter.run_network_batch([r[2] for r in ready])
        except Exception as exc:
            self._inference_failed([r[0] for r in ready], exc)
            return []
        network_s = time.monotonic() - t0
        return [InferredFrame(camera, header, net, want, received_at, network_s, stream)
                for (camera, header, _, want, received_at), net in zip(ready, nets, strict=True)]

    def publish_frame(self, frame: InferredFrame) -> None:
        """Postprocess, refine the road mask, then publish every wanted output with the input's stamp.
        The run-time parameters are read once (a snapshot), so streams post-process side by side."""
        camera, header, want = frame.camera, frame.header, frame.wanted
        with self._settings_lock:
            settings, road_params = self._frame_settings, camera.road_grid.params
        t0 = time.monotonic()
        try:
            result = self._segmenters[frame.stream].postprocess(frame.net, want.compute,
                                                                overlay_alpha=settings.overlay_alpha)
        except Exception as exc:
            self._inference_failed([camera], exc)
            return
        inference_s = frame.network_s + time.monotonic() - t0
        if "road_mask" in result:
            result["road_mask"] = camera.road_grid.refine_with(road_params, result["road_mask"],
                                                               result.get("confidence"))
        with self._gate.held() as ok:
            if not ok or self._threads is None:  # released, or deactivated, while this frame was in flight
                camera.stats.count("dropped")
                return
            published, problems = publish_frame_outputs(camera, header, result, want, settings, self.vehicle)
        for problem in problems:
            camera.stats.count("no_road_grid", problem)
            self.get_logger().warning(problem, throttle_duration_sec=5.0)
        camera.stats.processed(published, time.monotonic() - frame.received_at, inference_s)

    def _recover_from(self, exc: Exception) -> None:
        """After a CUDA out-of-memory error give the cached blocks back, so the next frame can fit."""
        if "out of memory" in str(exc).lower() and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- diagnostics ---------------------------------------------------------------------------
    def diagnostics_callback(self) -> None:
        """1 Hz DiagnosticArray on /diagnostics, one status per camera: `<node>: <camera>` (the single
        camera: `<node>: segmentation`), level and message from `health`, counters, latency, rate, engine."""
        now = time.monotonic()
        fqn = self.get_fully_qualified_name()
        msg = DiagnosticArray(status=[self._camera_status(camera, fqn, now) for camera in self.cameras])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(msg)

    def _camera_status(self, camera: Camera, fqn: str, now: float) -> DiagnosticStatus:
        c, latencies, inference, problem = camera.stats.take()
        last_t, last_processed = camera.diag_last
        rate = (c["processed"] - last_processed) / max(now - last_t, 1e-6)
        camera.diag_last = (now, c["processed"])
        active = self._active.is_set()
        if active and not self.threads_alive():  # never expected: a thread died of something unforeseen
            level, message = health.ERROR, "a processing thread stopped: frames are no longer segmented"
        elif active:
            level, message = health.assess(camera.stats.input_state(), problem, now=now,
                                           active_since=self._active_since, limits=self.health_limits,
                                           received=c["received"], rate_hz=rate)
        else:
            level, message = health.OK, "inactive (lifecycle): frames are ignored"
        input_topic = camera.image_sub.topic_name
        status = DiagnosticStatus(level=LEVELS[level], name=f"{fqn}: {camera.label}", message=message,
                                  hardware_id=f"{fqn}:{camera.name or input_topic}")

        values = {
            **health.frame_values(c, latencies, inference, rate),
            "camera": camera.label,
            "input topic": input_topic,
            "device": str(self.device),
            "precision": self.segmenter.precision,
            "backend": self.segmenter.backend,
            **self._engine_facts,
            "model": self.model_name,
            "checkpoint": str(self.checkpoint_path),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def threads_alive(self) -> bool:
        """Whether the frame-taking thread, the workers (and, pipelined, the publisher thread) still run:
        a failing frame must never take one down."""
        direct_ok = self._direct is None or self._direct.alive()
        return direct_ok and self._threads is not None and self._threads.alive()

    def _stop_direct_take(self) -> None:
        """Before the image subscriptions are destroyed: the thread must be out of rcl first."""
        if self._direct is not None:
            self._direct.stop()
            self._direct = None

    # -- shutdown ------------------------------------------------------------------------------
    def destroy_node(self) -> None:
        self._stop_direct_take()
        self._stop_processing()
        self._mailboxes.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `segmentation_node`; exit status 2 with one error line on a bad parameter."""
    profile, how = apply_fastdds_profile()  # before rclpy.init: Fast DDS reads it at participant creation

    def make_node() -> SegmentationNode:
        node = SegmentationNode()
        if how == "packaged":
            node.get_logger().info(f"Fast DDS profile (packaged, for large frames): {profile}")
        elif how == "user":
            node.get_logger().info(f"Fast DDS profile (from the environment): {profile}")
        else:
            node.get_logger().warning("packaged Fast DDS profile not found; large frames may not arrive")
        return node

    return run_node(NODE_NAME, make_node, args, config_errors=(ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
