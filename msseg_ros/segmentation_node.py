"""The segmentation node: camera frames in, label / colour / overlay / confidence / road images out.

A thin layer over `msseg_core.inference.Segmenter`: it owns parameters, QoS, a latest-frame worker,
publishers and diagnostics, and no image maths (decoding lives in `image_codec`, everything else in
`Segmenter`). The image subscription is raw: its callback only drops the serialized message into a
one-slot mailbox; a worker thread takes the newest frame and deserializes it (`rosbags`, see cdr.py),
so a slow network never builds a queue and a frame that is replaced before the worker gets to it is
counted as dropped, having cost no more than a copy of its bytes. Every output carries the input's
header and the input's resolution. Run `segmentation_node --ros-args -p checkpoint:=model.safetensors`.

Two threads form a pipeline (parameter `pipelined`, default on): the worker decodes frame N+1 and
runs the network on it (`Segmenter.run_network`) while a publisher thread post-processes frame N at
full resolution (`Segmenter.postprocess`: upsampling, argmax, colours, masks), encodes and publishes
it; they hand over through a one-slot queue that the worker waits on. Where a core is free, a frame
then costs max(network, postprocess + messages) instead of the sum; a frame's latency is the same.
Unpipelined, the worker does both halves itself.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterException,
)
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import InvalidQosOverridesError, QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from msseg_core.checkpoint import CheckpointError, default_checkpoint, load_meta
from msseg_core.inference import BACKENDS, OUTPUTS, PRECISIONS, NetworkOutput, Segmenter, resolve_device
from msseg_ros.image_codec import (
    COMPRESSED_TYPE,
    DEFAULT_MAX_PIXELS,
    IMAGE_TYPE,
    ImageDecodeError,
    decode_serialized,
    encode_image,
)
from msseg_ros.qos import apply_fastdds_profile, diagnostics_qos, input_qos, output_qos
from msseg_ros.road_grid import ROAD_GRID_DEFAULTS, ROAD_GRID_TOPIC, RoadGridBuilder, declare_road_grid_parameters

NODE_NAME = "msseg_node"
OUTPUT_ENCODINGS: dict[str, str] = {
    "labels": "mono8",  # class ids, see the class_names parameter
    "color_mask": "rgb8",  # palette colours, see class_colors
    "overlay": "rgb8",  # colours blended over the frame (overlay_alpha)
    "confidence": "mono8",  # max class probability x 255
    "road_mask": "mono8",  # 255 = road: road_classes, thresholded, cleaned, ego region (road_* parameters)
}
assert set(OUTPUT_ENCODINGS) == set(OUTPUTS), "every Segmenter output needs a topic"
TRANSPORTS = ("raw", "compressed")
LATENCY_WINDOW = 200  # frames in the latency mean / p99
EXIT_CONFIG_ERROR = 2

T = TypeVar("T")


class ConfigError(ValueError):
    """A start-up parameter or checkpoint the node cannot run with; main() prints it as one line."""


class LatestMailbox(Generic[T]):
    """A one-slot queue: put() replaces what is pending (the caller counts that as a dropped frame)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store the item; True if it replaced one the worker had not taken yet."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The pending item (None after the timeout or once closed)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class FrameCounters:
    """What happened to every frame. Once the node is idle:
    received == processed + dropped + invalid + errors + skipped."""

    received: int = 0
    processed: int = 0  # outputs published
    dropped: int = 0  # replaced by a newer frame before the worker took it
    invalid: int = 0  # could not be decoded, or over max_input_pixels
    errors: int = 0  # inference, publishing (or an unexpected decode failure) raised; the frame is lost
    skipped: int = 0  # no output had a subscriber, nothing was computed
    published: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTPUTS, 0))

    def snapshot(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "published"}, "published": dict(self.published)}


@dataclass
class InferredFrame:
    """One frame on its way from the worker (network) to the publisher (postprocess, publish)."""

    header: Header
    net: NetworkOutput  # logits owned by this frame (Segmenter.run_network); keeps the decoded frame alive
    compute: set[str]  # outputs to post-process: the wanted ones and what the road mask needs
    wanted: list[str]  # outputs with subscribers when the frame was taken
    grid_wanted: bool
    received_at: float
    network_s: float


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level too (Linux, 15 characters), so that
    `top -H`, `ps -L` and /proc/<pid>/task show msseg_worker and msseg_publisher and their CPU."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, threading.current_thread().name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # not Linux: a cosmetic loss only
        pass


def _descriptor(description: str, ptype: int, read_only: bool = False, constraints: str = "",
                **ranges: Any) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, type=ptype, read_only=read_only,
                               additional_constraints=constraints, **ranges)


def _load_onnx_meta(path: str):
    """Metadata of an ONNX file from msseg-export (Segmenter.from_checkpoint runs those too)."""
    from msseg_core.export import load_onnx_meta

    return load_onnx_meta(path)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class SegmentationNode(Node):
    """Segments every newest camera frame; see the module docstring and config/camvid.yaml."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.counters = FrameCounters()
        self.camera_info: CameraInfo | None = None  # latest, for outputs that need the camera model
        self._counters_lock = threading.Lock()
        self._segment_lock = threading.Lock()  # run-time parameter changes vs. postprocessing
        self._mailbox: LatestMailbox[tuple[bytes, float]] = LatestMailbox()  # serialized frame, arrival
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._inference_times: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_problem = ""
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._publisher: threading.Thread | None = None
        self._outbox: queue.Queue[InferredFrame] = queue.Queue(maxsize=1)  # worker -> publisher
        try:
            self._configure()
        except ConfigError:
            self.destroy_node()
            raise
        except (ParameterException, InvalidQosOverridesError, CheckpointError, ValueError, RuntimeError) as exc:
            self.destroy_node()
            raise ConfigError(_one_line(exc)) from None
        self._worker = threading.Thread(target=self._worker_loop, name="msseg_worker", daemon=True)
        self._worker.start()
        if self.pipelined:
            self._publisher = threading.Thread(target=self._publisher_loop, name="msseg_publisher", daemon=True)
            self._publisher.start()

    # -- start-up ------------------------------------------------------------------------------
    def _configure(self) -> None:
        p = Parameter.Type
        checkpoint = self._declare("checkpoint", "", _descriptor(
            "Model checkpoint (.safetensors, or .onnx from msseg-export); '' = the packaged CamVid model",
            p.STRING, read_only=True))
        device = self._declare("device", "auto", _descriptor(
            "Inference device; auto = CUDA when available, else CPU", p.STRING, read_only=True,
            constraints="auto, cpu, cuda or cuda:N"))
        precision = self._declare("precision", "fp32", _descriptor(
            "Inference precision (fp16 needs CUDA)", p.STRING, read_only=True, constraints=", ".join(PRECISIONS)))
        size_range = [IntegerRange(from_value=0, to_value=8192, step=1)]
        width = self._declare("input_width", 0, _descriptor(
            "Network input width in pixels; 0 = the checkpoint's", p.INTEGER, read_only=True,
            integer_range=size_range))
        height = self._declare("input_height", 0, _descriptor(
            "Network input height in pixels; 0 = the checkpoint's", p.INTEGER, read_only=True,
            integer_range=size_range))
        backend = self._declare("backend", "auto", _descriptor(
            "Inference backend; auto = PyTorch on CUDA, on the CPU ONNX Runtime where timed faster at start-up",
            p.STRING, read_only=True, constraints=", ".join(BACKENDS)))
        threads = self._declare("threads", 0, _descriptor(
            "CPU inference threads (process-wide); 0 = every core this process may use", p.INTEGER,
            read_only=True, integer_range=[IntegerRange(from_value=0, to_value=1024, step=1)]))
        transport = self._declare("input_transport", "raw", _descriptor(
            "raw: subscribe `image` (sensor_msgs/Image); compressed: `image/compressed` (CompressedImage)",
            p.STRING, read_only=True, constraints="raw or compressed"))
        self.max_input_pixels = self._declare("max_input_pixels", DEFAULT_MAX_PIXELS, _descriptor(
            "Frames with more pixels (width x height) are rejected and counted as invalid", p.INTEGER,
            read_only=True, integer_range=[IntegerRange(from_value=1, to_value=2**31 - 1, step=1)]))
        self.pipelined = bool(self._declare("pipelined", True, _descriptor(
            "Post-process and publish frame N in a second thread while the network runs on frame N+1 (rate: "
            "max instead of sum of the two stages; same latency). false = one thread does both", p.BOOL,
            read_only=True)))
        self.overlay_alpha = float(self._declare("overlay_alpha", 0.5, _descriptor(
            "Weight of the class colours in `overlay` (0 = frame only, 1 = colours only); changeable at run time",
            p.DOUBLE, floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)])))

        if transport not in TRANSPORTS:
            raise ConfigError(f"parameter input_transport must be raw or compressed, got {transport!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"parameter precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"parameter backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        try:
            self.device = resolve_device(device)
        except ValueError as exc:
            raise ConfigError(f"parameter device: {_one_line(exc)}") from None
        try:
            path = checkpoint or str(default_checkpoint())
            meta = load_meta(path) if not path.lower().endswith(".onnx") else _load_onnx_meta(path)
        except CheckpointError as exc:
            raise ConfigError(f"parameter checkpoint: {_one_line(exc)}") from None

        road = self._declare("road_classes", list(meta.road_classes), _descriptor(
            "Classes that form `road_mask` (names from class_names); changeable at run time", p.STRING_ARRAY))
        problem = self._check_road_classes(road, meta.class_names)
        if problem:
            raise ConfigError(f"parameter road_classes: {problem}")

        input_size = None
        if width or height:
            input_size = (height or meta.input_size[0], width or meta.input_size[1])
        try:
            self.segmenter = Segmenter.from_checkpoint(path, device=str(self.device), precision=precision,
                                                       input_size=input_size, backend=backend,
                                                       threads=threads or None)
            self.segmenter.set_road_classes(road)
        except (CheckpointError, ValueError) as exc:
            raise ConfigError(f"cannot load the model: {_one_line(exc)}") from None
        self.checkpoint_path = path
        self.model_name = meta.model

        # Read-only facts for clients; ignore_override: a YAML cannot make them lie about the model.
        self.declare_parameter("class_names", self.segmenter.class_names, _descriptor(
            "What label id i means: class_names[i] (from the checkpoint)", p.STRING_ARRAY, read_only=True),
            ignore_override=True)
        colors = ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in self.segmenter.palette]
        self.declare_parameter("class_colors", colors, _descriptor(
            "Colour of class i in color_mask / overlay, as '#rrggbb' strings (from the checkpoint)",
            p.STRING_ARRAY, read_only=True), ignore_override=True)

        qos_options = QoSOverridingOptions.with_default_policies
        # raw=True: frames arrive serialized and only the one the worker takes is deserialized (cdr.py).
        if transport == "compressed":
            self._input_type = COMPRESSED_TYPE
            self.image_sub = self.create_subscription(CompressedImage, "image/compressed", self.image_callback,
                                                      input_qos(), qos_overriding_options=qos_options(), raw=True)
        else:
            self._input_type = IMAGE_TYPE
            self.image_sub = self.create_subscription(Image, "image", self.image_callback, input_qos(),
                                                      qos_overriding_options=qos_options(), raw=True)
        self.camera_info_sub = self.create_subscription(CameraInfo, "camera_info", self.camera_info_callback,
                                                        input_qos(), qos_overriding_options=qos_options())
        self.output_pubs = {name: self.create_publisher(Image, name, output_qos(), qos_overriding_options=qos_options())
                            for name in OUTPUTS}
        # Road outputs for planners: the road mask refinement and its ground-plane grid (road_grid.py).
        self.road_grid = RoadGridBuilder(**declare_road_grid_parameters(self))
        self.road_grid_pub = self.create_publisher(OccupancyGrid, ROAD_GRID_TOPIC, output_qos(),
                                                   qos_overriding_options=qos_options())
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_last = (time.monotonic(), 0)
        self.diagnostics_timer = self.create_timer(1.0, self.diagnostics_callback)
        self.add_on_set_parameters_callback(self.validate_parameters_callback)
        self.add_post_set_parameters_callback(self.apply_parameters_callback)
        h, w = self.segmenter.input_size
        self.get_logger().info(
            f"model {meta.model} ({meta.num_classes} classes) from {path} on {self.device} {precision}, "
            f"backend {self.segmenter.backend}, network input {w}x{h}; "
            f"subscribed to {self.image_sub.topic_name} ({transport})")

    def _declare(self, name: str, default: Any, descriptor: ParameterDescriptor) -> Any:
        """declare_parameter, with rclpy's type and range errors reworded into one clear line."""
        try:
            return self.declare_parameter(name, default, descriptor).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            given = getattr(self, "_parameter_overrides", {}).get(name)
            value = given.value if given is not None else default
            if isinstance(exc, InvalidParameterTypeException):
                expected = Parameter.Type(descriptor.type).name.lower().replace("_", " ")
                raise ConfigError(f"parameter {name}: expected type {expected}, got {value!r}") from None
            limits = descriptor.floating_point_range or descriptor.integer_range
            if limits:
                raise ConfigError(f"parameter {name}: {value!r} is outside [{limits[0].from_value}, "
                                  f"{limits[0].to_value}]") from None
            raise ConfigError(f"parameter {name}: {_one_line(exc)}") from None

    @staticmethod
    def _check_road_classes(names: Sequence[str], known: Sequence[str]) -> str:
        if not names:
            return "must name at least one class"
        unknown = [n for n in names if n not in known]
        if unknown:
            return f"unknown classes {unknown}; classes are {list(known)}"
        return ""

    # -- run-time parameters -------------------------------------------------------------------
    def validate_parameters_callback(self, params: list[Parameter]) -> SetParametersResult:
        """Reject bad run-time values before anything changes (read-only ones rclpy rejects itself)."""
        for param in params:
            if param.name == "road_classes":
                if param.type_ != Parameter.Type.STRING_ARRAY:
                    return SetParametersResult(successful=False, reason="road_classes must be a string array")
                problem = self._check_road_classes(list(param.value), self.segmenter.class_names)
                if problem:
                    return SetParametersResult(successful=False, reason=f"road_classes: {problem}")
            elif param.name == "overlay_alpha" and (param.type_ != Parameter.Type.DOUBLE
                                                    or not 0.0 <= param.value <= 1.0):
                reason = f"overlay_alpha must be a double in [0, 1], got {param.value!r}"
                return SetParametersResult(successful=False, reason=reason)
        road_updates = {p.name: p.value for p in params if p.name in ROAD_GRID_DEFAULTS}
        if road_updates and (reason := self.road_grid.check_params(**road_updates)):
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def apply_parameters_callback(self, params: list[Parameter]) -> None:
        """Apply values that passed validation; they hold from the next frame to be post-processed."""
        with self._segment_lock:
            for param in params:
                if param.name == "road_classes":
                    self.segmenter.set_road_classes(list(param.value))
                    self.get_logger().info(f"road_classes = {list(param.value)}")
                elif param.name == "overlay_alpha":
                    self.overlay_alpha = float(param.value)
                    self.get_logger().info(f"overlay_alpha = {self.overlay_alpha}")
            road_updates = {p.name: p.value for p in params if p.name in ROAD_GRID_DEFAULTS}
            if road_updates:
                self.road_grid.set_params(**road_updates)
                self.get_logger().info(f"road parameters: {road_updates}")

    # -- callbacks -----------------------------------------------------------------------------
    def image_callback(self, msg: bytes) -> None:
        """Only store the serialized frame: the worker takes the newest one when it is free and
        deserializes it then, so a frame replaced before that costs no more than its bytes."""
        with self._counters_lock:  # counted before the worker can see it: pending never goes negative
            self.counters.received += 1
        if self._mailbox.put((msg, time.monotonic())):
            self._count("dropped")

    def camera_info_callback(self, msg: CameraInfo) -> None:
        self.camera_info = msg
        self.road_grid.update_camera_info(msg)  # rebuilds the grid lookup only when the camera changed

    # -- the worker ----------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        """Newest frame -> network -> the publisher thread (or postprocess and publish here, unpipelined)."""
        name_os_thread()
        while not self._stop.is_set():
            item = self._mailbox.take(timeout=0.5)
            if item is None:
                continue
            try:
                frame = self.infer_frame(*item)
                if frame is not None:
                    self._hand_over(frame)
            except Exception as exc:  # e.g. MemoryError decoding a frame: lose that frame, never the worker
                if not self.context.ok():
                    return
                self._frame_failed(exc)

    def _hand_over(self, frame: InferredFrame) -> None:
        if not self.pipelined:
            self.publish_frame(frame)
            return
        while not self._stop.is_set():  # waits while the publisher is busy: back-pressure, no queue
            try:
                self._outbox.put(frame, timeout=0.5)
                return
            except queue.Full:
                continue

    def _publisher_loop(self) -> None:
        name_os_thread()
        while not self._stop.is_set():
            try:
                frame = self._outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.publish_frame(frame)
            except Exception as exc:  # publishing failed: lose that frame, never the thread
                if not self.context.ok():
                    return
                self._frame_failed(exc)

    def _frame_failed(self, exc: Exception) -> None:
        self._count("errors", f"frame failed: {type(exc).__name__}: {_one_line(exc)}")
        self.get_logger().error(f"frame dropped, {type(exc).__name__}: {_one_line(exc)}", throttle_duration_sec=5.0)

    def _inference_failed(self, exc: Exception) -> None:
        """E.g. CUDA out of memory in the network or the full-resolution postprocess: lose this frame only."""
        if not self.context.ok():  # shutting down, nothing to report
            return
        self._recover_from(exc)
        self._count("errors", f"inference failed: {type(exc).__name__}: {_one_line(exc)}")
        self.get_logger().error(f"frame dropped, inference failed: {type(exc).__name__}: {_one_line(exc)}",
                                throttle_duration_sec=5.0)

    def infer_frame(self, raw: bytes, received_at: float) -> InferredFrame | None:
        """Decode and run the network (for the outputs someone subscribes to); None when the frame ends here."""
        try:  # rgb8: a view of the deserialized message's buffer, no copy
            header, rgb = decode_serialized(raw, self._input_type, self.max_input_pixels, copy=False)
        except ImageDecodeError as exc:
            self._count("invalid", f"invalid frame: {exc}")
            self.get_logger().warning(f"invalid frame dropped: {exc}", throttle_duration_sec=5.0)
            return None
        wanted = [name for name, pub in self.output_pubs.items() if pub.get_subscription_count() > 0]
        grid_wanted = self.road_grid_pub.get_subscription_count() > 0
        compute = set(wanted)
        if grid_wanted or "road_mask" in compute:
            compute.add("road_mask")
            if self.road_grid.params.road_min_confidence > 0:
                compute.add("confidence")  # the road threshold reads it; no second forward pass
        if not compute:
            self._count("skipped")
            return None
        try:
            t0 = time.monotonic()
            net = self.segmenter.run_network(rgb)
        except Exception as exc:
            self._inference_failed(exc)
            return None
        return InferredFrame(header, net, compute, wanted, grid_wanted, received_at, time.monotonic() - t0)

    def publish_frame(self, frame: InferredFrame) -> None:
        """Postprocess, refine the road mask, then publish every wanted output (and the road grid) with
        the input's header."""
        header = frame.header
        with self._segment_lock:  # one consistent set of run-time parameters per frame
            t0 = time.monotonic()
            try:
                result = self.segmenter.postprocess(frame.net, frame.compute, overlay_alpha=self.overlay_alpha)
            except Exception as exc:
                self._inference_failed(exc)
                return
            inference_s = frame.network_s + time.monotonic() - t0
            if "road_mask" in result:
                result["road_mask"] = self.road_grid.refine(result["road_mask"], result.get("confidence"))
        for name in frame.wanted:
            self.output_pubs[name].publish(encode_image(result[name], OUTPUT_ENCODINGS[name], header))
        if frame.grid_wanted:
            grid = self.road_grid.build(result["road_mask"], header, refined=True)
            if grid is not None:
                self.road_grid_pub.publish(grid)
            else:
                self.get_logger().warning(f"no road_grid: {self.road_grid.camera_error or 'no CameraInfo yet'}",
                                          throttle_duration_sec=5.0)
        with self._counters_lock:
            self.counters.processed += 1
            for name in frame.wanted:
                self.counters.published[name] += 1
            self._latencies.append(time.monotonic() - frame.received_at)
            self._inference_times.append(inference_s)

    def _recover_from(self, exc: Exception) -> None:
        """After a CUDA out-of-memory error give the cached blocks back, so the next frame can fit."""
        if "out of memory" in str(exc).lower() and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _count(self, counter: str, problem: str = "") -> None:
        with self._counters_lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            if problem:
                self._last_problem = problem

    # -- diagnostics ---------------------------------------------------------------------------
    def diagnostics_callback(self) -> None:
        """1 Hz DiagnosticArray on /diagnostics: counters, latency, output rate, device, model."""
        now = time.monotonic()
        with self._counters_lock:
            c = self.counters.snapshot()
            latencies = np.asarray(self._latencies, dtype=np.float64)
            inference = np.asarray(self._inference_times, dtype=np.float64)
            problem, self._last_problem = self._last_problem, ""
        last_t, last_processed = self._diag_last
        rate = (c["processed"] - last_processed) / max(now - last_t, 1e-6)
        self._diag_last = (now, c["processed"])
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: segmentation",
                                  hardware_id=str(self.device))
        if problem:
            status.level = DiagnosticStatus.ERROR if problem.startswith("inference") else DiagnosticStatus.WARN
            status.message = problem[:200]
        else:
            status.level = DiagnosticStatus.OK
            status.message = "segmenting" if rate > 0 else ("waiting for frames" if c["received"] == 0 else "idle")

        def ms(values: np.ndarray, q: float | None = None) -> str:
            if values.size == 0:
                return "nan"
            return f"{(np.percentile(values, q) if q is not None else values.mean()) * 1e3:.1f}"

        values = {
            **{k: str(v) for k, v in c.items() if k != "published"},
            **{f"published {k}": str(v) for k, v in c["published"].items()},
            "latency mean ms": ms(latencies),
            "latency p99 ms": ms(latencies, 99),
            "inference mean ms": ms(inference),
            "output rate hz": f"{rate:.2f}",
            "device": str(self.device),
            "precision": self.segmenter.precision,
            "backend": self.segmenter.backend,
            "model": self.model_name,
            "checkpoint": str(self.checkpoint_path),
            "input topic": self.image_sub.topic_name,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(msg)

    # -- shutdown ------------------------------------------------------------------------------
    def destroy_node(self) -> None:
        self._stop.set()
        self._mailbox.close()
        for thread in (self._worker, self._publisher):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `segmentation_node`; exit status 2 with one error line on a bad parameter."""
    profile, how = apply_fastdds_profile()  # before rclpy.init: Fast DDS reads it at participant creation
    try:
        rclpy.init(args=args)
    except Exception as exc:  # RCLError: a malformed --ros-args, an unreadable --params-file
        reason = re.sub(r", at /\S+:\d+", "", _one_line(exc))  # drop rcl's C source locations
        get_logger(NODE_NAME).error(f"cannot start: {reason}")
        return EXIT_CONFIG_ERROR
    node = None
    try:
        node = SegmentationNode()
        if how == "packaged":
            node.get_logger().info(f"Fast DDS profile (packaged, for large frames): {profile}")
        elif how == "user":
            node.get_logger().info(f"Fast DDS profile (from the environment): {profile}")
        else:
            node.get_logger().warning("packaged Fast DDS profile not found; large frames may not arrive")
        rclpy.spin(node)
    except ConfigError as exc:
        get_logger(NODE_NAME).error(f"cannot start: {exc}")
        return EXIT_CONFIG_ERROR
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
