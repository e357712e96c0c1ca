"""Shared utilities for tests that drive msseg ROS nodes over real DDS.

- `image_in_encoding`: an RGB frame as a sensor_msgs/Image in any supported encoding, with row padding.
- `node_args`: the test settings as `--ros-args`, for msseg_ros.transport.graph.NodeProcess (a node started as a
  subprocess the way users start it).
- `InProcessNode`: the SegmentationNode on its own rclpy Context and executor thread (no start-up cost).
- `SegmentationClient`: a client node (own Context) that publishes frames, collects the node's outputs
  by stamp, reads /diagnostics and calls the parameter and lifecycle services.
- `DiagnosticsLog`: every /diagnostics status of one node, in arrival order.
- `namespace`: a namespace unique to this test run, for the topics of one test.

Every process of a test run shares the ROS_DOMAIN_ID conftest.py picked, so test runs cannot see each
other's topics. This module points Fast DDS at the packaged large-image profile on import (before any
participant exists), like the node does: a camera-side process needs it for large frames.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from msseg_ros.node.pipeline import COUNTERS
from msseg_ros.transport import topics
from msseg_ros.transport.graph import PrivateContext, ros_arguments
from msseg_ros.transport.image_codec import encode_image
from msseg_ros.transport.qos import apply_fastdds_profile

apply_fastdds_profile()

REPO = Path(__file__).resolve().parent.parent
RUN_ID = os.environ["MSSEG_TEST_RUN_ID"]  # conftest.py: unique per test run

StampKey = tuple[int, int]


def namespace(name: str) -> str:
    """A namespace for one test's topics, unique to this test run: '/<name>_<run id>'."""
    return f"/{name.strip('/')}_{RUN_ID}"


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


# -- the node's frame counters -------------------------------------------------------------------
def frame_counters(node: Any) -> dict[str, int]:
    """The counters that account for every frame (pipeline.COUNTERS) of an in-process node, read at once."""
    counts = node.stats.snapshot()
    return {k: counts[k] for k in COUNTERS}


# -- nodes in subprocesses -----------------------------------------------------------------------
FAST_PARAMS = {"device": "cpu", "backend": "torch", "threads": 1}
"""Test settings: CPU, PyTorch (no ONNX export and backend race at start-up), one thread (faster on
shared cores, and reproducible against a reference Segmenter built with the same settings)."""


def node_args(checkpoint: str | os.PathLike, namespace: str = "", **params: Any) -> list[str]:
    """`--ros-args` for the segmentation node: checkpoint, FAST_PARAMS, namespace, extra `-p name:=value`."""
    return ros_arguments(namespace, params={"checkpoint": checkpoint, **FAST_PARAMS, **params})


# -- nodes in this process -----------------------------------------------------------------------
class InProcessNode(contextlib.AbstractContextManager):
    """SegmentationNode with FAST_PARAMS updated by `parameters`, spun in a background thread."""

    def __init__(self, parameters: dict[str, Any], namespace: str = "", node_name: str = "msseg_node"):
        from msseg_ros.node.segmentation_node import SegmentationNode

        self._ros = PrivateContext()
        overrides = [Parameter(k, value=v) for k, v in {**FAST_PARAMS, **parameters}.items()]
        try:
            self.node = SegmentationNode(node_name, context=self._ros.context, namespace=namespace,
                                         parameter_overrides=overrides)
        except BaseException:
            self._ros.close()
            raise
        self._ros.add_node(self.node)

    @property
    def fqn(self) -> str:
        return self.node.get_fully_qualified_name()

    def close(self) -> None:
        self._ros.stop()
        self.node.destroy_node()
        self._ros.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the client ----------------------------------------------------------------------------------
class SegmentationClient(contextlib.AbstractContextManager):
    """Publishes frames to a segmentation node and collects its outputs, keyed by input stamp."""

    def __init__(self, namespace: str = "", *, outputs: Iterable[str] = topics.OUTPUTS,
                 image_topic: str | None = None, compressed: bool = False, reliability: str = "best_effort",
                 name: str = "msseg_test_client"):
        self.namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self._ros = PrivateContext()
        self.node = self._ros.create_node(name)
        topic = image_topic or topics.in_namespace(self.namespace, topics.IMAGE)
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
                Image, topics.in_namespace(self.namespace, out), lambda msg, out=out: self._on_output(out, msg),
                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)

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

    def count_received(self, predicate: Callable[[dict[str, Image]], bool]) -> int:
        """How many frames' outputs received so far satisfy the predicate (output name -> message)."""
        with self._cond:
            return sum(1 for outputs in self.received.values() if predicate(outputs))

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

    def _find_status(self, node_fqn: str, after: int = 0, camera: str | None = None) -> DiagnosticStatus | None:
        for name, (seq, status) in self.diagnostics.items():
            mine = name == f"{node_fqn}: {camera}" if camera is not None else name.startswith(f"{node_fqn}:")
            if mine and seq > after:
                return status
        return None

    def status_message(self, node_fqn: str, camera: str | None = None) -> DiagnosticStatus | None:
        """Latest DiagnosticStatus of that node (of that camera's status, if given; None before the first)."""
        with self._cond:
            return self._find_status(node_fqn, camera=camera)

    def wait_for_status(self, node_fqn: str, predicate: Callable[[dict[str, str]], bool] = lambda s: True,
                        timeout: float = 20.0, fresh: bool = True, camera: str | None = None) -> dict[str, str]:
        """Key/values of a diagnostics status of that node (of `<node>: <camera>` if given) satisfying the
        predicate (values are strings); fresh: only one that arrives after this call (the node's counters
        are at least as new as now)."""
        def match() -> dict[str, str] | None:
            status = self._find_status(node_fqn, after, camera)
            values = None if status is None else {kv.key: kv.value for kv in status.values}
            return values if values is not None and predicate(values) else None

        with self._cond:
            after = self._diag_seq if fresh else 0
            values = self._cond.wait_for(match, timeout)
            last = self._find_status(node_fqn, camera=camera)
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

    # -- lifecycle (lifecycle_msgs services of a managed node) ----------------------------------------
    def change_state(self, node_fqn: str, transition: str, timeout: float = 60.0) -> bool:
        """Request a transition by label (configure, activate, deactivate, cleanup, shutdown); its success."""
        request = ChangeState.Request(transition=Transition(label=transition))
        return bool(self._call(ChangeState, f"{node_fqn}/change_state", request, timeout).success)

    def lifecycle_state(self, node_fqn: str, timeout: float = 10.0) -> str:
        """The node's current state label (unconfigured, inactive, active, finalized)."""
        return self._call(GetState, f"{node_fqn}/get_state", GetState.Request(), timeout).current_state.label

    def available_transitions(self, node_fqn: str, timeout: float = 10.0) -> set[str]:
        response = self._call(GetAvailableTransitions, f"{node_fqn}/get_available_transitions",
                              GetAvailableTransitions.Request(), timeout)
        return {t.transition.label for t in response.available_transitions}

    def subscribed_topics(self, node_name: str, namespace: str, timeout: float = 30.0) -> set[str]:
        """Topics the node subscribes to. A node whose services already answered may still be missing from this
        process's graph cache (discovery is asynchronous), so wait until the graph lists it first."""
        deadline = time.monotonic() + timeout
        while (node_name, namespace) not in self.node.get_node_names_and_namespaces():
            assert time.monotonic() < deadline, f"{namespace}/{node_name} never appeared in the ROS graph"
            time.sleep(0.05)
        return {name for name, _ in self.node.get_subscriber_names_and_types_by_node(node_name, namespace)}

    def close(self) -> None:
        self._ros.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class DiagnosticsLog:
    """Every DiagnosticStatus of one node, in arrival order (the client keeps only the latest)."""

    def __init__(self, client: SegmentationClient, fqn: str):
        self.statuses: list[DiagnosticStatus] = []
        self._lock = threading.Lock()
        client.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on, 50)
        self.fqn = fqn

    def _on(self, msg: DiagnosticArray) -> None:
        with self._lock:
            self.statuses += [s for s in msg.status if s.name.startswith(f"{self.fqn}:")]

    def wait_for(self, predicate, start: int = 0, timeout: float = 10.0) -> DiagnosticStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [s for s in self.statuses[start:] if predicate(s)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no such status from {self.fqn} within {timeout} s; last: {self.statuses[-1:]}")

    def __len__(self) -> int:
        with self._lock:
            return len(self.statuses)
