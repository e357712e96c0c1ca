"""Shared utilities for tests that drive msseg ROS nodes over real DDS.

- `tiny_checkpoint`: a session fixture writing a checkpoint of the smallest real network (CamVid classes).
- `image_in_encoding`: an RGB frame as a sensor_msgs/Image in any supported encoding, with row padding.
- `NodeProcess`: a node started as a subprocess the way users start it (`<script> --ros-args ...`).
- `InProcessNode`: the SegmentationNode on its own rclpy Context and executor thread (no start-up cost).
- `SegmentationClient`: a client node (own Context) that publishes frames, collects the node's outputs
  by stamp, reads /diagnostics and calls the parameter services.

Every process of a test run shares the ROS_DOMAIN_ID conftest.py picked, so tests cannot see each other's
topics. This module points Fast DDS at the packaged large-image profile on import (before any
participant exists), like the node does: a camera-side process needs it for large frames.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from msseg_core.inference import OUTPUTS
from msseg_ros.image_codec import encode_image
from msseg_ros.qos import apply_fastdds_profile

apply_fastdds_profile()

REPO = Path(__file__).resolve().parent.parent
SCRIPT_MODULES = {"segmentation_node": "msseg_ros.segmentation_node"}

StampKey = tuple[int, int]


# -- frames --------------------------------------------------------------------------------------
_stamps = itertools.count(1)


def make_header(frame_id: str = "camera_optical") -> Header:
    """A header with a stamp unique within this process (outputs are matched by stamp)."""
    n = next(_stamps)
    return Header(stamp=Time(sec=1_700_000_000 + n, nanosec=(n * 7919) % 1_000_000_000), frame_id=frame_id)


def stamp_key(header: Header) -> StampKey:
    return header.stamp.sec, header.stamp.nanosec


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (smooth so demosaicing and chroma subsampling stay close to it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample RGB through a 2x2 colour filter `pattern` ('rggb', ...: row 0 then row 1) -> H x W uint8."""
    index = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[2 * dy + dx]]]
    return out


def image_in_encoding(rgb: np.ndarray, encoding: str, header: Header | None = None, padding: int = 0,
                      big_endian: bool = False) -> Image:
    """An RGB frame as a raw Image in `encoding`, each row followed by `padding` junk bytes."""
    header = header or make_header()
    h, w = rgb.shape[:2]
    if encoding == "rgb8":
        pixels = rgb
    elif encoding in ("bgr8", "rgba8", "bgra8"):
        code = {"bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA, "bgra8": cv2.COLOR_RGB2BGRA}[encoding]
        pixels = cv2.cvtColor(rgb, code)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "mono16":
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
        pixels = gray.astype(">u2" if big_endian else "<u2").view(np.uint8).reshape(h, w, 2)
    elif encoding.startswith("bayer_"):
        pixels = bayer_mosaic(rgb, encoding[6:10])
    elif encoding in ("yuv422", "yuv422_yuy2"):
        code = cv2.COLOR_RGB2YUV_UYVY if encoding == "yuv422" else cv2.COLOR_RGB2YUV_YUY2
        pixels = cv2.cvtColor(rgb, code)
    else:
        raise ValueError(f"no test encoder for {encoding!r}")
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    if padding:
        rows = np.concatenate([rows, np.full((h, padding), 0xAB, np.uint8)], axis=1)
    msg = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=int(big_endian),
                step=rows.shape[1])
    msg.data = array.array("B", rows.tobytes())  # stored as is; bytes would be checked byte by byte
    return msg


def image_array(msg: Image) -> np.ndarray:
    """The pixels of a mono8 / rgb8 output as H x W or H x W x 3 uint8 (no padding expected)."""
    channels = {"mono8": 1, "rgb8": 3}[msg.encoding]
    pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    return pixels.reshape(msg.height, msg.width, channels)[..., 0] if channels == 1 else \
        pixels.reshape(msg.height, msg.width, 3)


def rgb_image(rgb: np.ndarray, header: Header | None = None) -> Image:
    return encode_image(rgb, "rgb8", header or make_header())


# -- nodes in subprocesses -----------------------------------------------------------------------
class NodeProcess:
    """A node started like a user would (`segmentation_node --ros-args ...`), output in a log file."""

    def __init__(self, ros_args: Iterable[str], executable: str = "segmentation_node",
                 env: dict[str, str] | None = None, cwd: str | os.PathLike = REPO):
        script = Path(sys.executable).parent / executable
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", SCRIPT_MODULES[executable]]
        self.cmd = cmd + list(ros_args)
        fd, self.log_path = tempfile.mkstemp(prefix=f"{executable}_", suffix=".log")
        with os.fdopen(fd, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        """Exit status once it ends by itself (raises subprocess.TimeoutExpired)."""
        return self.proc.wait(timeout)

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive:
                raise AssertionError(f"node exited with {self.proc.returncode} before printing {text!r}:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from the node within {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (a clean ROS shutdown), SIGKILL if that does not end it."""
        if self.alive:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log_path)


FAST_PARAMS = {"device": "cpu", "backend": "torch", "threads": 1}
"""Test settings: CPU, PyTorch (no ONNX export and backend race at start-up), one thread (faster on
shared cores, and reproducible against a reference Segmenter built with the same settings)."""


def node_args(checkpoint: str | os.PathLike, namespace: str = "", **params: Any) -> list[str]:
    """`--ros-args` for the segmentation node: checkpoint, FAST_PARAMS, namespace, extra `-p name:=value`."""
    args = ["--ros-args", "-p", f"checkpoint:={checkpoint}"]
    for name, value in FAST_PARAMS.items():
        args += ["-p", f"{name}:={_ros_arg(value)}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    for name, value in params.items():
        args += ["-p", f"{name}:={_ros_arg(value)}"]
    return args


def _ros_arg(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_ros_arg(v) for v in value) + "]"
    return str(value)


# -- nodes in this process -----------------------------------------------------------------------
class _Spinner:
    """An rclpy Context of its own with an executor thread, so nodes here never share global state."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._thread: threading.Thread | None = None

    def spin(self, node: Any) -> None:
        self.executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the context shuts down under us at close()
            self.executor.spin()

    def stop(self) -> None:
        """Stop spinning (call before destroying the nodes)."""
        self.executor.shutdown(timeout_sec=2.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def shutdown(self) -> None:
        self.stop()
        rclpy.try_shutdown(context=self.context)


class InProcessNode:
    """SegmentationNode with FAST_PARAMS updated by `parameters`, spun in a background thread."""

    def __init__(self, parameters: dict[str, Any], namespace: str = "", node_name: str = "msseg_node"):
        from msseg_ros.segmentation_node import SegmentationNode

        self._spinner = _Spinner()
        overrides = [Parameter(k, value=v) for k, v in {**FAST_PARAMS, **parameters}.items()]
        try:
            self.node = SegmentationNode(node_name, context=self._spinner.context, namespace=namespace,
                                         parameter_overrides=overrides)
        except BaseException:
            self._spinner.shutdown()
            raise
        self._spinner.spin(self.node)

    @property
    def fqn(self) -> str:
        return self.node.get_fully_qualified_name()

    def close(self) -> None:
        self._spinner.stop()
        self.node.destroy_node()
        self._spinner.shutdown()

    def __enter__(self) -> InProcessNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the client ----------------------------------------------------------------------------------
class SegmentationClient:
    """Publishes frames to a segmentation node and collects its outputs, keyed by input stamp."""

    def __init__(self, namespace: str = "", *, outputs: Iterable[str] = OUTPUTS, image_topic: str | None = None,
                 compressed: bool = False, reliability: str = "best_effort", name: str = "msseg_test_client"):
        self.namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self._spinner = _Spinner()
        self.node = rclpy.create_node(name, context=self._spinner.context)
        topic = image_topic or f"{self.namespace}/image"
        if compressed:
            topic += "/compressed"
        policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        self.image_pub = self.node.create_publisher(CompressedImage if compressed else Image, topic,
                                                    QoSProfile(depth=10, reliability=policy))
        self._cond = threading.Condition()
        self.received: dict[StampKey, dict[str, Image]] = {}
        self.diagnostics: dict[str, tuple[int, DiagnosticStatus]] = {}  # status name -> (arrival no., status)
        self._diag_seq = 0
        self.output_subs = {}
        for out in outputs:
            self.output_subs[out] = self.node.create_subscription(
                Image, f"{self.namespace}/{out}", lambda msg, out=out: self._on_output(out, msg),
                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._spinner.spin(self.node)

    def _on_output(self, name: str, msg: Image) -> None:
        with self._cond:
            self.received.setdefault(stamp_key(msg.header), {})[name] = msg
            self._cond.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self._cond:
            for status in msg.status:
                self._diag_seq += 1
                self.diagnostics[status.name] = (self._diag_seq, status)
            self._cond.notify_all()

    def publish(self, msg: Image | CompressedImage) -> StampKey:
        self.image_pub.publish(msg)
        return stamp_key(msg.header)

    def wait_for(self, key: StampKey, outputs: Iterable[str] | None = None, timeout: float = 20.0) -> dict[str, Image]:
        """The outputs answering the frame with this stamp (AssertionError after the timeout)."""
        wanted = set(outputs if outputs is not None else self.output_subs)
        with self._cond:
            ok = self._cond.wait_for(lambda: wanted <= set(self.received.get(key, {})), timeout)
            got = dict(self.received.get(key, {}))
        assert ok, f"outputs {sorted(wanted - set(got))} for stamp {key} not received within {timeout} s"
        return got

    def request(self, msg: Image | CompressedImage, outputs: Iterable[str] | None = None,
                timeout: float = 20.0) -> dict[str, Image]:
        """Publish one frame and wait for its outputs."""
        return self.wait_for(self.publish(msg), outputs, timeout)

    def wait_until_served(self, make_frame: Callable[[], Image | CompressedImage] | None = None,
                          timeout: float = 60.0) -> None:
        """Send frames until one is answered on every output: discovery is complete both ways and the
        node has seen our subscriptions (it skips outputs nobody subscribes to)."""
        make_frame = make_frame or (lambda: rgb_image(random_rgb(24, 32)))
        deadline = time.monotonic() + timeout
        while True:
            key = self.publish(make_frame())
            try:
                self.wait_for(key, timeout=0.5)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"node in {self.namespace or '/'} did not answer within {timeout} s") from None

    def _find_status(self, node_fqn: str, after: int = 0) -> DiagnosticStatus | None:
        for name, (seq, status) in self.diagnostics.items():
            if name.startswith(f"{node_fqn}:") and seq > after:
                return status
        return None

    def status_message(self, node_fqn: str) -> DiagnosticStatus | None:
        """Latest DiagnosticStatus of that node (None before the first)."""
        with self._cond:
            return self._find_status(node_fqn)

    def wait_for_status(self, node_fqn: str, predicate: Callable[[dict[str, str]], bool] = lambda s: True,
                        timeout: float = 20.0, fresh: bool = True) -> dict[str, str]:
        """Key/values of a diagnostics status of that node satisfying the predicate (values are strings);
        fresh: only one that arrives after this call (the node's counters are at least as new as now)."""
        def match() -> dict[str, str] | None:
            status = self._find_status(node_fqn, after)
            values = None if status is None else {kv.key: kv.value for kv in status.values}
            return values if values is not None and predicate(values) else None

        with self._cond:
            after = self._diag_seq if fresh else 0
            values = self._cond.wait_for(match, timeout)
            last = self._find_status(node_fqn)
        assert values, f"no matching diagnostics from {node_fqn} within {timeout} s; last: {last}"
        return values

    def _call(self, srv_type: Any, service: str, request: Any, timeout: float) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {service} not available"
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            assert done.wait(timeout), f"no answer from {service} within {timeout} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_fqn: str, values: dict[str, Any], timeout: float = 10.0) -> list[SetParametersResult]:
        """Set parameters of a remote node through its service, one result per parameter."""
        params = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        request = SetParameters.Request(parameters=params)
        return list(self._call(SetParameters, f"{node_fqn}/set_parameters", request, timeout).results)

    def get_parameters(self, node_fqn: str, names: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        names = list(names)
        response = self._call(GetParameters, f"{node_fqn}/get_parameters", GetParameters.Request(names=names), timeout)
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values, strict=True)}

    def close(self) -> None:
        self._spinner.stop()
        self.node.destroy_node()
        self._spinner.shutdown()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
