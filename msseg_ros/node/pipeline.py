"""How frames move through the segmentation node: latest-frame mailboxes, one slot per camera
(subscriptions -> worker, taken round robin), a one-slot hand-over (worker -> publisher thread) and
the counters that account for every frame of a camera. No rclpy in here.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from msseg_ros.transport import topics

if TYPE_CHECKING:
    from msseg_core.runtime.segmenter import NetworkOutput

T = TypeVar("T")
LATENCY_WINDOW = 200  # frames in the latency mean / p99


class CameraMailboxes(Generic[T]):
    """One latest-frame slot per camera under one lock. put() replaces what is pending for that camera
    (the caller counts it as dropped); take() hands a worker the pending frames of up to `limit`
    cameras at once, starting after the camera that came first last time (round robin), so under
    overload every camera gets its turn and none starves. A camera taken is in flight until release():
    no other worker gets its next frame before then, so each camera's outputs keep their order."""

    def __init__(self, cameras: int) -> None:
        self._cond = threading.Condition()
        self._slots: list[T | None] = [None] * cameras
        self._in_flight = [False] * cameras
        self._next = 0  # the camera that goes first in the next take()
        self._closed = False

    def put(self, camera: int, item: T) -> bool:
        """Store the camera's newest item; True if it replaced one the worker had not taken yet."""
        with self._cond:
            replaced = self._slots[camera] is not None
            self._slots[camera] = item
            self._cond.notify()
            return replaced

    def take(self, limit: int = 0, timeout: float | None = None) -> list[tuple[int, T]]:
        """(camera, item) for up to `limit` cameras with a pending item (0 = all), in round-robin order;
        [] after the timeout or once closed."""
        with self._cond:
            if not self._closed and not self._ready():
                self._cond.wait(timeout)
            n, taken = len(self._slots), []
            for k in range(n):
                camera = (self._next + k) % n
                item = self._slots[camera]
                if item is not None and not self._in_flight[camera]:
                    taken.append((camera, item))
                    self._slots[camera] = None
                    self._in_flight[camera] = True
                    if len(taken) == limit:
                        break
            if taken:
                self._next = (taken[-1][0] + 1) % n
            return taken

    def _ready(self) -> bool:
        return any(item is not None and not busy for item, busy in zip(self._slots, self._in_flight, strict=True))

    def release(self, cameras: Iterable[int]) -> None:
        """These cameras' taken frames are done (published, handed on in order, or lost): their next
        frames may be taken."""
        with self._cond:
            for camera in cameras:
                self._in_flight[camera] = False
            if self._ready():
                self._cond.notify()

    def drain(self) -> list[tuple[int, T]]:
        """Remove and return every pending item (e.g. frames that arrived just before a deactivation)."""
        with self._cond:
            taken = [(camera, item) for camera, item in enumerate(self._slots) if item is not None]
            self._slots = [None] * len(self._slots)
            return taken

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Handover(Generic[T]):
    """A one-slot queue between two threads with back-pressure: put() waits while the taker is busy,
    so the giver never runs more than one item ahead and no queue builds up."""

    def __init__(self, stop: threading.Event) -> None:
        self._queue: queue.Queue[T] = queue.Queue(maxsize=1)
        self._stop = stop

    def put(self, item: T) -> bool:
        """Hand the item over; False if `stop` was set first."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def take(self, timeout: float = 0.5) -> T | None:
        """The item handed over, or None after the timeout."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


COUNTERS = ("received", "processed", "dropped", "invalid", "errors", "skipped")
"""The frame counters of the node's diagnostics that account for every frame received."""


def all_accounted(counts: Mapping[str, Any]) -> bool:
    """received == processed + dropped + invalid + errors + skipped: every frame received has an end
    (true once the node is idle)."""
    return int(counts["received"]) == sum(int(counts[k]) for k in COUNTERS[1:])


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
    no_road_grid: int = 0  # processed, but a ground output (grid, points) was wanted and could not be made
    ignored: int = 0  # arrived while the node was inactive (lifecycle): not looked at, not in `received`
    published: dict[str, int] = field(default_factory=lambda: dict.fromkeys(topics.OUTPUTS, 0))

    def snapshot(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "published"}, "published": dict(self.published)}


@dataclass(frozen=True)
class InputState:
    """What a camera's health is judged on: when its last frame arrived (time.monotonic(), None before
    the first) and how many frames in a row failed (invalid or errors) since the last processed one."""

    last_arrival: float | None
    failing_streak: int
    last_failure: str


class FrameStats:
    """FrameCounters, the latency of the latest frames and the last problem, safe across threads."""

    def __init__(self) -> None:
        self.counters = FrameCounters()
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._inference_times: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_problem = ""
        self._last_arrival: float | None = None
        self._failing_streak = 0
        self._last_failure = ""

    def count(self, counter: str, problem: str = "", now: float | None = None) -> None:
        """One more frame in `counter`; `problem` (if any) is reported by the next take(). `now`: the
        arrival time of a received frame (health)."""
        with self._lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            if problem:
                self._last_problem = problem
            if counter == "received" and now is not None:
                self._last_arrival = now
            elif counter in ("invalid", "errors"):
                self._failing_streak += 1
                self._last_failure = problem or counter

    def processed(self, outputs: list[str], latency_s: float, inference_s: float) -> None:
        with self._lock:
            self.counters.processed += 1
            for name in outputs:
                self.counters.published[name] = self.counters.published.get(name, 0) + 1
            self._latencies.append(latency_s)
            self._inference_times.append(inference_s)
            self._failing_streak = 0

    def input_state(self) -> InputState:
        with self._lock:
            return InputState(self._last_arrival, self._failing_streak, self._last_failure)

    def snapshot(self) -> dict[str, Any]:
        """The counters, consistent with one another."""
        with self._lock:
            return self.counters.snapshot()

    def take(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray, str]:
        """(counters, latencies [s], inference times [s], the problem since the last take())."""
        with self._lock:
            problem, self._last_problem = self._last_problem, ""
            return (self.counters.snapshot(), np.asarray(self._latencies, dtype=np.float64),
                    np.asarray(self._inference_times, dtype=np.float64), problem)


@dataclass
class InferredFrame:
    """One frame on its way from the worker (network) to the publisher (postprocess, publish)."""

    camera: Any  # whose frame (the node's cameras.Camera): its publishers, road grid and counters
    header: Any  # the input image's std_msgs/Header
    net: NetworkOutput  # logits owned by this frame (Segmenter.run_network); keeps the decoded frame alive
    wanted: Any  # outputs.Wanted: what its subscribers asked for when it was taken, what to compute
    received_at: float
    network_s: float  # the network's time for the batch this frame ran in
    stream: int = 0  # the worker (and Segmenter replica) that ran it; its postprocess uses that replica too


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level too (Linux, 15 characters), so that
    `top -H`, `ps -L` and /proc/<pid>/task show msseg_worker and msseg_publisher and their CPU."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, threading.current_thread().name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # not Linux: a cosmetic loss only
        pass


class EntityGate:
    """Lets the frame threads use the node's ROS entities (publishers, subscriber counts) only while they
    exist. A thread holds the gate for the moments it touches them; closing it refuses new holders and
    waits for the current ones, so the node destroys its entities only once no thread can reach them,
    even when a slow frame outlived the threads' join timeout."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._inside = 0

    def open(self) -> None:
        with self._cond:
            self._open = True

    @contextlib.contextmanager
    def held(self) -> Iterator[bool]:
        """`with gate.held() as ok:` ok False = the entities are gone or going: touch nothing."""
        with self._cond:
            ok = self._open
            if ok:
                self._inside += 1
        try:
            yield ok
        finally:
            if ok:
                with self._cond:
                    self._inside -= 1
                    self._cond.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new holders; True once no thread holds the gate (False if one still does after `timeout`)."""
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: self._inside == 0, timeout)


class FrameThreads:
    """The worker threads (mailboxes -> `infer` -> publish) from activation to deactivation.

    One stream (`streams` 1): one worker runs the network and, pipelined, hands each frame to a
    publisher thread (`publish`) so that frame N is post-processed while the network runs on N+1.
    Several streams: as many workers, each with its own Segmenter replica (`infer(stream, items)`),
    each publishing its own frames; a camera is in flight in one worker at a time (CameraMailboxes),
    so each camera's outputs keep their order while the workers overlap one another.

    A frame that fails in `publish` is given to `failed(camera, exc)` and lost alone; frames for which
    `infer` raises (it counts what it expects itself) go to `infer_failed(camera indices, exc)`: no
    thread ever dies of a frame. A frame inferred but not published when the threads stop is given to
    `dropped(camera)`: every frame is accounted for."""

    def __init__(self, mailboxes: CameraMailboxes, infer: Callable[[int, list], list[InferredFrame]],
                 publish: Callable[[InferredFrame], None], failed: Callable[[Any, Exception], None],
                 dropped: Callable[[Any], None], running: Callable[[], bool], pipelined: bool,
                 max_batch: int, streams: int = 1,
                 infer_failed: Callable[[list[int], Exception], None] | None = None) -> None:
        self._mailboxes, self._infer, self._publish, self._failed = mailboxes, infer, publish, failed
        self._dropped = dropped
        self._infer_failed = infer_failed or (lambda cameras, exc: None)
        self._running, self._max_batch = running, max_batch
        self.pipelined = pipelined and streams == 1
        self._stop = threading.Event()
        self._outbox: Handover[InferredFrame] = Handover(self._stop)  # worker -> publisher
        self.workers = [threading.Thread(target=self._worker_loop, args=(k,), daemon=True,
                                         name="msseg_worker" if streams == 1 else f"msseg_worker{k}")
                        for k in range(streams)]
        self.publisher = threading.Thread(target=self._publisher_loop, name="msseg_publisher", daemon=True) \
            if self.pipelined else None

    def _threads(self) -> list[threading.Thread]:
        return [*self.workers, *([self.publisher] if self.publisher is not None else [])]

    def start(self) -> None:
        for thread in self._threads():
            thread.start()

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Ask every thread to stop and wait until each finished the frame in hand, at most `timeout`
        seconds in all; the names of the threads still running then (a frame slower than that)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads():
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        while (frame := self._outbox.take(timeout=0)) is not None:  # handed over, never published
            self._dropped(frame.camera)
        return [t.name for t in self._threads() if t.is_alive() and t is not threading.current_thread()]

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads())

    def _publish_one(self, frame: InferredFrame) -> bool:
        """Publish one frame; False once the process is shutting down."""
        try:
            self._publish(frame)
        except Exception as exc:  # publishing failed: lose that frame, never the thread
            if not self._running():
                return False
            self._failed(frame.camera, exc)
        return True

    def _worker_loop(self, stream: int) -> None:
        """Newest frames -> network (one batch) -> the publisher thread (or postprocess and publish here)."""
        name_os_thread()
        while not self._stop.is_set():
            items = self._mailboxes.take(self._max_batch, timeout=0.5)
            if not items:
                continue
            try:
                frames = self._infer(stream, items)
            except Exception as exc:  # `infer` counts what it expects; anything else loses these frames only
                self._mailboxes.release(camera for camera, _ in items)
                if not self._running():
                    return
                self._infer_failed([camera for camera, _ in items], exc)
                continue
            try:
                for frame in frames:
                    if self.pipelined:
                        if not self._outbox.put(frame):  # waits while the publisher is busy: back-pressure
                            self._dropped(frame.camera)  # stopping
                    elif not self._publish_one(frame):
                        return
            finally:
                self._mailboxes.release(camera for camera, _ in items)

    def _publisher_loop(self) -> None:
        name_os_thread()
        while not self._stop.is_set():
            frame = self._outbox.take(timeout=0.5)
            if frame is not None and not self._publish_one(frame):
                return
