"""Health that notices, over real DDS: a camera that stops is WARN within `input_timeout`, OK again
once it is back; a camera that never sent anything is WARN after `startup_grace`; a camera whose frames
all fail is ERROR until frames can be processed again. One status per camera, `<node>: <camera>`."""

from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from helpers_ros import (
    DiagnosticsLog,
    InProcessNode,
    SegmentationClient,
    image_in_encoding,
    namespace,
    random_rgb,
    rgb_image,
)

from msseg_ros.transport.graph import NodeProcess

pytestmark = pytest.mark.ros


def camera_process(ns: str) -> NodeProcess:
    """The synthetic camera, publishing `<ns>/image` at 5 Hz (a real camera driver's process)."""
    return NodeProcess("synthetic_camera", ["--ros-args", "-r", f"__ns:={ns}", "-p", "rate:=5.0", "-p", "width:=48",
                                            "-p", "height:=32", "-p", "reliability:=best_effort"])


def test_a_camera_that_stops_is_warn_and_ok_again_when_it_is_back(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("health")
    params = {"checkpoint": str(tiny_checkpoint), "cameras": ["front", "left"], "input_timeout": 1.0,
              "startup_grace": 2.0}
    with InProcessNode(params, ns) as node, SegmentationClient(f"{ns}/front", outputs=("labels",)) as client:
        log = DiagnosticsLog(client, node.fqn)
        front, left = f"{node.fqn}: front", f"{node.fqn}: left"

        def level(name: str, level: bytes, text: str = "", start: int = 0) -> DiagnosticStatus:
            return log.wait_for(lambda s: s.name == name and s.level == level and text in s.message, start, timeout=60)

        with camera_process(f"{ns}/front"):
            level(front, DiagnosticStatus.OK, "segmenting")
            # The left camera never sent a frame: WARN once the start-up grace is over.
            status = level(left, DiagnosticStatus.WARN, "no frame received")
            assert status.hardware_id == f"{node.fqn}:left"
            mark = len(log)
        status = level(front, DiagnosticStatus.WARN, "no frame for", mark)  # the camera process stopped
        assert "input_timeout 1 s" in status.message
        mark = len(log)
        with camera_process(f"{ns}/front"):
            level(front, DiagnosticStatus.OK, "segmenting", mark)


def test_frames_that_all_fail_are_error_until_frames_flow_again(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("health_error")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node, SegmentationClient(ns) as client:
        log = DiagnosticsLog(client, node.fqn)
        client.wait_until_served()
        mark = len(log)

        def stream_until(make_frame, predicate, start: int) -> DiagnosticStatus:
            for _ in range(600):
                client.publish(make_frame())
                try:
                    return log.wait_for(predicate, start, timeout=0.1)
                except AssertionError:
                    continue
            raise AssertionError(f"no such status; last: {log.statuses[-1:]}")

        def unsupported():  # a camera sending an encoding the node cannot decode
            msg = image_in_encoding(random_rgb(8, 8), "rgb8")
            msg.encoding = "32FC1"
            return msg

        status = stream_until(unsupported, lambda s: s.level == DiagnosticStatus.ERROR, mark)
        assert "none can be processed" in status.message and "32FC1" in status.message, status.message
        mark = len(log)
        status = stream_until(lambda: rgb_image(random_rgb(16, 24)), lambda s: s.level == DiagnosticStatus.OK, mark)
        assert status.message == "segmenting"


def test_a_stopped_processing_thread_is_an_error(tiny_checkpoint) -> None:  # noqa: F811
    """Never expected (no frame can kill a thread), but if a worker ever stopped the node would go on
    receiving and answer nothing: the diagnostics say ERROR instead of a silent OK."""
    ns = namespace("dead_thread")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node, \
            SegmentationClient(ns, outputs=("labels",), name="dead_thread_client") as client:
        client.wait_until_served()
        log = DiagnosticsLog(client, node.fqn)
        node.node._threads.stop()  # as if the worker had died
        status = log.wait_for(lambda s: s.level == DiagnosticStatus.ERROR and "thread stopped" in s.message, 0,
                              timeout=30)
        assert status.name == f"{node.fqn}: segmentation"
