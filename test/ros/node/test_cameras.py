"""The node's per-camera machinery without a node: round-robin mailboxes, camera names and per-camera
parameters, and what the health rules make of a camera's state (the node tests cover them over DDS)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from msseg_ros.node import health
from msseg_ros.node.cameras import Camera, auto_streams, check_camera_names, check_camera_parameters
from msseg_ros.node.pipeline import CameraMailboxes, FrameStats, FrameThreads, InferredFrame, InputState
from msseg_ros.node.road_grid import RoadGridBuilder

# No rclpy here: the node's threading core, cameras and health rules run without ROS (`make test-fast`).


def test_mailboxes_take_every_pending_camera_round_robin() -> None:
    boxes: CameraMailboxes[str] = CameraMailboxes(3)
    assert boxes.take(timeout=0) == []
    assert boxes.put(0, "f1") is False and boxes.put(0, "f2") is True  # the older frame is replaced
    boxes.put(2, "r1")
    assert boxes.take() == [(0, "f2"), (2, "r1")]  # one of each pending camera, in camera order
    boxes.release([0, 2])
    for camera in range(3):
        boxes.put(camera, f"x{camera}")
    assert boxes.take() == [(0, "x0"), (1, "x1"), (2, "x2")]  # after camera 2 came last: start at 0


def test_mailboxes_limit_rotates_so_no_camera_starves() -> None:
    """max_batch 1 under overload (every camera always has a frame pending): strict rotation."""
    boxes: CameraMailboxes[int] = CameraMailboxes(3)
    served = []
    for frame in range(9):
        for camera in range(3):
            boxes.put(camera, frame)
        (camera, _), = boxes.take(limit=1)
        boxes.release([camera])
        served.append(camera)
    assert served == [0, 1, 2] * 3
    assert [camera for camera, _ in boxes.drain()] == [0, 1]  # still pending: camera 2 was served last
    for camera in (0, 2):
        boxes.put(camera, 99)
    assert boxes.take(limit=2) == [(0, 99), (2, 99)] and boxes.drain() == []
    boxes.release([0, 2])
    boxes.put(1, 5)
    assert boxes.drain() == [(1, 5)] and boxes.take(timeout=0) == []


def test_a_camera_is_in_one_worker_at_a_time() -> None:
    """Several workers (streams): a camera's next frame waits until its frame in flight is released, so
    its outputs cannot overtake each other; other cameras are taken meanwhile."""
    boxes: CameraMailboxes[str] = CameraMailboxes(2)
    boxes.put(0, "a1")
    assert boxes.take() == [(0, "a1")]
    boxes.put(0, "a2")
    boxes.put(1, "b1")
    assert boxes.take() == [(1, "b1")]  # camera 0 is in flight: its newer frame waits
    assert boxes.take(timeout=0.05) == []
    got: list = []
    waiter = threading.Thread(target=lambda: got.extend(boxes.take(timeout=10)))
    waiter.start()
    boxes.release([0])  # wakes the waiting worker: camera 0's pending frame may go now
    waiter.join(10)
    assert got == [(0, "a2")]


def test_streams_overlap_and_keep_each_cameras_order() -> None:
    """Two streams: two workers are in the network at the same moment (the barrier only opens with
    both inside), each publishes its own frames, and every camera's frames come out in order."""
    boxes: CameraMailboxes[int] = CameraMailboxes(3)
    both_inside = threading.Barrier(2, timeout=20)
    overlapped = threading.Event()
    published: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def infer(stream: int, items: list) -> list[InferredFrame]:
        if not overlapped.is_set():
            both_inside.wait()
            overlapped.set()
        return [InferredFrame(camera, None, None, None, 0.0, 0.0, stream)  # type: ignore[arg-type]
                for camera, _ in items]

    def publish(frame: InferredFrame) -> None:
        with lock:
            published.append((frame.camera, frame.header, threading.current_thread().name))

    threads = FrameThreads(boxes, lambda stream, items: [
        replace(f, header=seq) for f, (_, seq) in zip(infer(stream, items), items, strict=True)],
        publish, failed=lambda c, e: None, dropped=lambda c: None, running=lambda: True, pipelined=True,
        max_batch=1, streams=2)
    assert threads.pipelined is False  # with several streams each worker publishes its own frames
    threads.start()
    try:
        for seq in range(60):
            boxes.put(seq % 3, seq)
            time.sleep(0.001)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(seq >= 57 for _, seq, _ in published):
            time.sleep(0.01)
    finally:
        threads.stop()
    assert overlapped.is_set()
    assert {name for _, _, name in published} == {"msseg_worker0", "msseg_worker1"}
    for camera in range(3):
        seqs = [seq for c, seq, _ in published if c == camera]
        assert seqs and seqs == sorted(seqs), (camera, seqs)


def test_a_worker_outlives_an_unexpected_failure() -> None:
    """`infer` raising something it did not count itself: those frames go to infer_failed (the node counts
    them as errors), their cameras are released, and the worker goes on with the next frames."""
    boxes: CameraMailboxes[int] = CameraMailboxes(2)
    failures: list[tuple[list[int], str]] = []
    published: list[int] = []
    calls = iter(range(1000))

    def infer(stream: int, items: list) -> list[InferredFrame]:
        if next(calls) == 0:
            raise RuntimeError("unforeseen")
        return [InferredFrame(camera, seq, None, None, 0.0, 0.0, stream)  # type: ignore[arg-type]
                for camera, seq in items]

    threads = FrameThreads(boxes, infer, lambda frame: published.append(frame.header), failed=lambda c, e: None,
                           dropped=lambda c: None, running=lambda: True, pipelined=False, max_batch=0,
                           infer_failed=lambda cameras, exc: failures.append((cameras, str(exc))))
    threads.start()
    try:
        boxes.put(0, 1)
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        boxes.put(0, 2)
        boxes.put(1, 3)
        while len(published) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threads.alive()
    finally:
        threads.stop()
    assert failures == [([0], "unforeseen")] and sorted(published) == [2, 3]


@pytest.mark.parametrize(("cameras", "threads", "device", "cores", "expected"), [
    (1, 1, "cpu", 8, 1),  # one camera: one stream (pipelined instead)
    (4, 1, "cpu", 2, 4),  # one per camera, up to twice the cores
    (8, 1, "cpu", 2, 4),
    (4, 2, "cpu", 2, 4),  # whatever the threads per stream
    (3, 2, "cpu", 16, 3),
    (3, 0, "cpu", 8, 1),  # threads 0: one stream already takes every core
    (4, 1, "cuda", 8, 1),  # one GPU
])
def test_auto_streams(cameras, threads, device, cores, expected) -> None:
    assert auto_streams(cameras, threads, device, cores) == expected


@pytest.mark.parametrize(("names", "problem"), [
    (["front", "left"], None),
    (["front", "front"], "listed twice"),
    (["front/left"], "must start with a letter"),
    (["2nd"], "must start with a letter"),
    ([""], "must start with a letter"),
    (["device"], "name of a node parameter"),
    (["qos_overrides"], "name of a node parameter"),
])
def test_camera_names(names: list[str], problem: str | None) -> None:
    result = check_camera_names(names, reserved={"device", "checkpoint"})
    assert result is None if problem is None else problem in result, result


def test_a_params_file_may_describe_more_cameras_than_are_launched() -> None:
    """multi_camera.launch.py cameras:="[front,left]" with the default file, which mounts front, left and
    right: right's parameters are ignored with a note, never an error."""
    mounted = [f"{c}.{p}" for c in ("front", "left", "right") for p in ("camera_height", "camera_yaw")]
    problem, notes = check_camera_parameters([*mounted, "qos_overrides./x.publisher.depth", "device"],
                                             ["front", "left"])
    assert problem is None and notes == ["parameters of cameras not in `cameras` ignored: right"]
    assert check_camera_parameters(mounted, ["front", "left", "right"]) == (None, [])
    problem, notes = check_camera_parameters(["front.camera_pitch"], [])  # a one-camera node: nothing of it applies
    assert problem is None and notes == ["parameters of cameras not in `cameras` ignored: front"]


def test_a_misspelt_camera_or_parameter_is_an_error() -> None:
    mounted = [f"{c}.camera_height" for c in ("front", "left", "right")]
    problem, _ = check_camera_parameters(mounted, ["front", "lefft"])
    assert problem == ("camera 'lefft' has no parameters of its own, but 'left' has (and is not in cameras: "
                       "front, lefft): a misspelling?")
    problem, _ = check_camera_parameters(["front.camera_heigth"], ["front"])
    assert "no parameter 'camera_heigth'" in problem
    # A camera that simply has no parameters of its own (nothing close to it is described) runs on the
    # top-level values, with a note.
    problem, notes = check_camera_parameters(["front.camera_height"], ["front", "rear"])
    assert problem is None and notes == ["camera rear has no parameters of its own: it uses the top-level values"]


def test_camera_names_of_topics_and_parameters() -> None:
    single, front = Camera("", 0, RoadGridBuilder()), Camera("front", 1, RoadGridBuilder())
    assert (single.topic("labels"), single.parameter("camera_height"), single.label) == (
        "labels", "camera_height", "segmentation")
    assert (front.topic("image"), front.parameter("camera_height"), front.label) == (
        "front/image", "front.camera_height", "front")


LIMITS = health.HealthLimits(input_timeout=2.0, startup_grace=10.0)


def assess(state: InputState, problem: str = "", now: float = 100.0, received: int = 5, rate: float = 1.0):
    return health.assess(state, problem, now=now, active_since=50.0, limits=LIMITS, received=received, rate_hz=rate)


def test_health_rules() -> None:
    flowing = InputState(last_arrival=99.5, failing_streak=0, last_failure="")
    assert assess(flowing) == (health.OK, "segmenting")
    level, message = assess(InputState(95.0, 0, ""))
    assert level == health.WARN and "no frame for 5.0 s" in message
    assert assess(InputState(None, 0, ""), now=55.0, received=0, rate=0.0) == (health.OK, "waiting for frames")
    level, message = assess(InputState(None, 0, ""), now=61.0, received=0, rate=0.0)
    assert level == health.WARN and "no frame received in the 11 s since activation" in message
    level, message = assess(InputState(99.9, 3, "invalid frame: unsupported encoding '32FC1'"), rate=0.0)
    assert level == health.ERROR and "none can be processed" in message and "32FC1" in message
    assert assess(flowing, "inference failed: RuntimeError: CUDA error")[0] == health.ERROR
    assert assess(flowing, "invalid frame: step too small")[0] == health.WARN
    off = health.HealthLimits(input_timeout=0.0, startup_grace=10.0)
    assert health.assess(InputState(1.0, 0, ""), "", now=1e6, active_since=0.0, limits=off, received=1,
                         rate_hz=0.0) == (health.OK, "idle")


def test_frame_stats_track_arrivals_and_failing_streaks() -> None:
    stats = FrameStats()
    stats.count("received", now=12.5)
    stats.count("invalid", "invalid frame: bad")
    stats.count("errors", "inference failed: boom")
    assert stats.input_state() == InputState(12.5, 2, "inference failed: boom")
    stats.processed(["labels"], 0.1, 0.05)
    assert stats.input_state().failing_streak == 0


def test_engine_facts_for_diagnostics() -> None:
    facts = health.engine_facts({
        "backend": "onnxruntime", "precision": "fp32", "providers": ["CPUExecutionProvider"],
        "auto": {"choice": "onnxruntime", "timings_ms": {"torch": 12.345, "onnxruntime": 8.0},
                 "agreement": {"onnxruntime": 0.99991}, "cached": True, "skipped": {"openvino": "not installed"}}})
    assert facts == {"auto choice": "onnxruntime", "auto timings ms": "torch 12.35, onnxruntime 8.00",
                     "auto agreement": "onnxruntime 0.9999", "auto cached": "true", "auto skipped": "openvino",
                     "providers": "CPUExecutionProvider"}
    assert health.engine_facts({"backend": "tensorrt", "engine_cache": "loaded", "cuda_graphs": True}) == {
        "engine cache": "loaded", "cuda graphs": "true"}
