"""`msseg-bench node`: the real segmentation node over DDS versus the bare `Segmenter`, same frames.

The node runs as a subprocess (`segmentation_node --ros-args -p checkpoint:=... -r image:=...`) in a
namespace of its own. Two measurements, each on the same frames as the bare
`Segmenter` in this process with the same options:

lockstep  latency. This process publishes one frame, waits until all five outputs with that frame's
          stamp have arrived (the node is never asked for more than it can do, no frame waits in a
          queue), then runs `Segmenter.segment` itself on the same frame. The frame is serialized
          before the clock starts and the outputs are received serialized (only their stamps are
          read): a consumer that deserializes them pays that on top, in its own process.
          Interleaving the two per frame keeps slow drifts of machine load out of the ratio.
          node latency = last output received - frame published;
          overhead = median(node) - median(bare);  overhead_ratio = overhead / median(bare).
          Transport floor: each frame also makes a round trip through `transport_echo` (a node that
          takes frames as the segmentation node does and answers at once on the same outputs, same
          sizes and encodings): what DDS and rclpy cost for the frame in and the outputs out, which any
          node pays;
          overhead_beyond_transport = median(node) - median(bare) - median(floor).
rate      throughput, what a camera faster than the model gets. Phases of `--phase-seconds` alternate:
          the bare Segmenter back to back (`predict` for the labels alone, `segment` for all five
          outputs); the bare Segmenter as the pipelined node runs it (one thread `run_network`,
          another `postprocess`, one-slot handoff); then the node fed at `--feed-factor` x the faster
          of the two bare rates (it keeps the newest frame, drops the rest) while this process counts
          the frames whose every subscribed output came back (`--feed-hz 30`: fed at a camera's rate
          instead, to see whether the node keeps up with it).
          overhead_ratio = 1 - node rate / bare rate (the node against one
          thread calling the library); overhead_vs_pipelined = 1 - node rate / bare pipelined rate
          (what DDS and the node cost on top of the same two-thread pipeline). Frames are sent and
          outputs received as serialized bytes (only the stamp is written and read), so the cost of
          this process's own message conversions does not slow the node it measures on a machine
          with few cores.
cameras   (`--cameras 1,2,4`) one node serving N cameras against N single-camera nodes, on the same
          frames: both configurations run side by side and are fed in alternating phases, every
          camera at `--feed-factor` x the bare Segmenter's rate (so either configuration is
          overloaded); aggregate rate = frames of all cameras whose labels came back within the
          counting windows / window time; RSS = the resident memory of the node process(es) after
          each phase (VmRSS, summed over the N nodes; peak: VmHWM). One model in one process against
          N models in N processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from msseg_core.bench.options import parse_sizes, split_list
from msseg_core.bench.segmenter import synthetic_frames
from msseg_core.bench.timing import latency_stats
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter
from msseg_ros.bench.common import NS, STAMP_BASE, bare_phase, node_params, spin_until, thread_cpu_seconds
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import cdr_stamp, set_cdr_stamp

if TYPE_CHECKING:  # rclpy is imported only when `node` runs: `msseg-bench model` needs no ROS
    from msseg_ros.transport.graph import NodeProcess

log = logging.getLogger(__name__)
RATE_OUTPUTS = {"labels": ("labels",), "all": OUTPUTS}  # what the client subscribes to, per rate row


def output_set(which: str) -> tuple[str, ...]:
    """An --*-outputs name: labels, all, or outputs joined with '+' (labels+road_mask); KeyError if unknown."""
    if which in RATE_OUTPUTS:
        return RATE_OUTPUTS[which]
    names = tuple(which.split("+"))
    if not names or not set(names) <= set(OUTPUTS):
        raise KeyError(which)
    return names


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described in the module docstring; returns the report (kind 'node')."""
    modes = _modes(args)
    from msseg_ros.transport.qos import apply_fastdds_profile

    apply_fastdds_profile()  # before rclpy.init, for both processes (the child inherits the variables)
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from msseg_ros.transport.graph import NodeProcess, ros_arguments

    checkpoint = args.checkpoint or ""
    namespace = f"/msseg_bench_{os.getpid()}"
    params = node_params(args)
    bare = Segmenter.from_checkpoint(checkpoint or None, device=args.device, precision=args.precision,
                                     backend=args.backend, threads=args.threads or None, cache_dir=args.cache_dir)
    image_topic = topics.in_namespace(namespace, topics.IMAGE)
    node_proc = NodeProcess("segmentation_node", ros_arguments(namespace, [(topics.IMAGE, image_topic)], params),
                            env={"MSSEG_CACHE_DIR": str(args.cache_dir)} if args.cache_dir else None)
    rclpy.init()
    client = Node(f"msseg_bench_client_{os.getpid()}")
    # Reliable publisher: matches the node's best-effort input; reliable outputs match our reliable subs.
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    node = NodeEnds(rclpy, client, node_proc, namespace, reliable)
    echo = NodeEnds(rclpy, client, NodeProcess("transport_echo", ros_arguments(f"{namespace}_echo")),
                    f"{namespace}_echo", reliable) if "lockstep" in modes else None
    results = []
    try:
        node.subscribe_only(OUTPUTS, args.startup_timeout)
        if "lockstep" in modes:
            for row in _lockstep_rows(args, node, echo, bare):  # rows done before an error stay in the report
                results.append(row)
        if "rate" in modes:
            node.subscribe_only((), args.startup_timeout)
            results += _rate_rows(args, rclpy, client, node.pub, bare, node_proc, namespace)
    except RuntimeError as exc:
        results.append({"frame_size": None, "error": str(exc)})
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node_proc.stop(timeout=10.0)
        if echo is not None:
            echo.proc.stop(timeout=10.0)
    return {"kind": "node", "node_command": node_proc.cmd, "node_log": str(node_proc.log_path), "results": results}


def _modes(args: argparse.Namespace) -> list[str]:
    """--modes, after checking it and the --*-outputs names (exit status 2 on an unknown one, before
    anything is started)."""
    modes = split_list(args.modes)
    asked = set(split_list(args.rate_outputs)) | set(split_list(args.lockstep_outputs))
    known = {name for name in asked if name in RATE_OUTPUTS or set(name.split("+")) <= set(OUTPUTS)}
    unknown = sorted(set(modes) - {"lockstep", "rate"}) + sorted(asked - known)
    if unknown or not modes:
        print(f"msseg-bench node: unknown --modes/--*-outputs {unknown or modes}; modes are lockstep, rate; "
              f"output sets are {', '.join(RATE_OUTPUTS)} or outputs joined with '+' "
              f"({', '.join(OUTPUTS)})", file=sys.stderr)
        raise SystemExit(2)
    return modes


class NodeEnds:
    """This client's ends of a node under test (the segmentation node, or `transport_echo` for the
    transport floor): a publisher to its `image`, raw subscriptions to the outputs asked for (only the
    stamp is read, so the client's cost stays out), and when each output of each frame arrived."""

    def __init__(self, rclpy, client, proc: NodeProcess, namespace: str, qos) -> None:
        from sensor_msgs.msg import Image

        self.rclpy, self.client, self.proc, self.qos, self.namespace = rclpy, client, proc, qos, namespace
        self.arrivals: dict[str, dict[int, float]] = {name: {} for name in OUTPUTS}
        self.pub = client.create_publisher(Image, topics.in_namespace(namespace, topics.IMAGE), qos)
        self.subs: dict[str, Any] = {}

    def subscribe_only(self, names: tuple[str, ...], timeout: float) -> None:
        """Subscribe to exactly these outputs (a node computes only what someone subscribes to) and wait
        until the node is matched on both sides."""
        from sensor_msgs.msg import Image

        for name in set(self.subs) - set(names):
            self.client.destroy_subscription(self.subs.pop(name))
        for name in set(names) - set(self.subs):
            self.subs[name] = self.client.create_subscription(
                Image, topics.in_namespace(self.namespace, name),
                lambda data, name=name: self.arrivals[name].__setitem__(cdr_stamp(data) // NS - STAMP_BASE,
                                                                        time.perf_counter()),
                self.qos, raw=True)
        _wait_ready(self.rclpy, self.client, self.pub, list(self.subs.values()), self.proc, timeout)

    def round_trip(self, msg: bytes, frame_id: int, timeout: float) -> float | None:
        """Seconds from publishing this serialized frame to its last answer (None: not all within the timeout)."""
        t0 = time.perf_counter()
        self.pub.publish(msg)
        if not spin_until(self.rclpy, self.client, lambda: all(frame_id in self.arrivals[n] for n in self.subs),
                          timeout, self.proc):
            return None
        return max(self.arrivals[n].pop(frame_id) for n in self.subs) - t0


def _lockstep_rows(args: argparse.Namespace, node: NodeEnds, echo: NodeEnds, bare: Segmenter) -> Iterator[dict]:
    """The `lockstep` measurement of the module docstring: a row per output set and frame size, each
    yielded when done. Frame ids run on across rows: a late answer is never taken for a new frame's."""
    frame_id = 0
    for which in split_list(args.lockstep_outputs):
        outputs = output_set(which)
        node.subscribe_only(outputs, args.startup_timeout)
        echo.subscribe_only(outputs, args.startup_timeout)
        for size in parse_sizes(args.sizes):
            yield _lockstep_row(args, node, echo, bare, which, size, frame_id)
            frame_id += args.warmup + args.frames


def _lockstep_row(args: argparse.Namespace, node: NodeEnds, echo: NodeEnds, bare: Segmenter, which: str,
                  size: tuple[int, int], first_id: int) -> dict:
    """One lock-step row: per frame, the node's round trip, the bare call on the same frame, then the
    echo node's round trip (interleaved, so drifts of machine load hit all three alike)."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from msseg_ros.transport.image_codec import encode_image

    outputs = output_set(which)
    labels_only = outputs == ("labels",)
    frames = synthetic_frames(8, *size)
    node_t, bare_t, floor_t, lost = [], [], [], 0
    for k in range(args.warmup + args.frames):
        frame_id = first_id + k
        frame = frames[k % len(frames)]
        header = Header(frame_id="camera")
        header.stamp.sec = STAMP_BASE + frame_id
        msg = serialize_message(encode_image(frame, "rgb8", header))
        t_node = node.round_trip(msg, frame_id, args.timeout)
        lost += t_node is None
        t1 = time.perf_counter()
        if labels_only:
            bare.predict(frame)
        else:
            bare.segment(frame, outputs)
        t_bare = time.perf_counter() - t1
        t_floor = echo.round_trip(msg, frame_id, args.timeout)
        if k >= args.warmup and t_node is not None and t_floor is not None:
            node_t.append(t_node)
            bare_t.append(t_bare)
            floor_t.append(t_floor)
    row = {"mode": "lockstep", "outputs": which, "bare_call": "predict" if labels_only else "segment",
           "frame_size": list(size), "frames": len(node_t), "lost": lost,
           "backend": bare.describe().get("backend"), "describe": bare.describe()}
    _lockstep_figures(row, node_t, bare_t, floor_t, args.timeout)
    log.info("node %s %s: %s", which, size, row.get("error") or
             f"node p50 {row['node_latency_ms']['p50']:.2f} ms, bare p50 "
             f"{row['bare_latency_ms']['p50']:.2f} ms, overhead {100 * row['overhead_ratio']:.1f}%")
    return row


def _lockstep_figures(row: dict, node_t: list[float], bare_t: list[float], floor_t: list[float],
                      timeout: float) -> None:
    """Latency statistics of a lock-step row, the node's p50 over the bare call's, and the transport floor."""
    if not node_t:
        row["error"] = f"no frame came back from the node within {timeout} s"
        return
    row["node_latency_ms"] = latency_stats(node_t)["latency_ms"]
    row["bare_latency_ms"] = latency_stats(bare_t)["latency_ms"]
    n50, b50 = row["node_latency_ms"]["p50"], row["bare_latency_ms"]["p50"]
    row["overhead_ms"] = round(n50 - b50, 3)
    row["overhead_ratio"] = round((n50 - b50) / b50, 4)
    row["paired_overhead_ms_p50"] = round(float(np.median(np.subtract(node_t, bare_t))) * 1e3, 3)
    row["transport_floor_ms"] = latency_stats(floor_t)["latency_ms"]
    beyond = n50 - b50 - row["transport_floor_ms"]["p50"]
    row["overhead_beyond_transport_ms"] = round(beyond, 3)
    row["overhead_beyond_transport_ratio"] = round(beyond / b50, 4)


def _rate_rows(args, rclpy, client, pub, bare: Segmenter, proc: NodeProcess, namespace: str) -> list[dict]:
    """The `rate` measurement of the module docstring, for each output set and frame size."""
    return _RateBench(args, rclpy, client, pub, bare, proc, namespace).rows()


@dataclass
class _RateTally:
    """Frames and seconds summed over the rounds of one rate row for each contender (bare back to
    back, bare pipelined, the node), with the CPU the node phases took and the rates fed."""

    bare_n: float = 0.0
    bare_s: float = 0.0
    pipe_n: float = 0.0
    pipe_s: float = 0.0
    node_n: float = 0.0
    node_s: float = 0.0
    feeder_cpu: float = 0.0
    node_cpu: dict[str, float] = field(default_factory=dict)
    fed: list[float] = field(default_factory=list)

    def rates(self) -> tuple[float, float, float]:
        """(bare, bare pipelined, node) frames/s over all rounds."""
        return self.bare_n / self.bare_s, self.pipe_n / self.pipe_s, self.node_n / self.node_s


class _RateBench:
    """The `rate` rows: the ROS ends shared by every phase, one running stamp (no two frames share
    one, so a late answer never counts for a later phase) and the arrivals by stamp and output."""

    def __init__(self, args, rclpy, client, pub, bare: Segmenter, proc: NodeProcess, namespace: str) -> None:
        self.args, self.rclpy, self.client, self.pub = args, rclpy, client, pub
        self.bare, self.proc, self.namespace = bare, proc, namespace
        self.stamp = [STAMP_BASE + 500_000]
        self.arrivals: dict[int, dict[str, float]] = {}  # stamp sec -> output -> arrival time

    def rows(self) -> list[dict]:
        """For each --rate-outputs set: subscribe to exactly those outputs, then a row per frame size."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        rows = []
        for which in split_list(self.args.rate_outputs):
            outputs = output_set(which)
            subs = [self.client.create_subscription(Image, topics.in_namespace(self.namespace, name),
                                                    self._on_output(name), reliable, raw=True) for name in outputs]
            _wait_ready(self.rclpy, self.client, self.pub, subs, self.proc, self.args.startup_timeout)
            for size in parse_sizes(self.args.sizes):
                rows.append(self._row(which, outputs, size))
            for sub in subs:
                self.client.destroy_subscription(sub)
        return rows

    def _on_output(self, name: str):
        def cb(data: bytes) -> None:  # only the stamp is read
            self.arrivals.setdefault(cdr_stamp(data) // NS, {})[name] = time.perf_counter()

        return cb

    def _feed(self, msgs: list[bytearray], rate_hz: float, seconds: float, outputs) -> tuple[int, float, int]:
        return _feed(self.rclpy, self.client, self.pub, msgs, self.stamp, rate_hz, seconds, self.arrivals, outputs,
                     self.proc)

    def _row(self, which: str, outputs: tuple[str, ...], size: tuple[int, int]) -> dict:
        """Warm the three contenders up, alternate their phases for --rounds, and report the rates."""
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Header

        from msseg_ros.transport.image_codec import encode_image

        bare = self.bare
        frames = synthetic_frames(8, *size)
        msgs = [bytearray(serialize_message(encode_image(f, "rgb8", Header(frame_id="camera")))) for f in frames]
        labels_only = outputs == ("labels",)

        def bare_call(frame):
            return bare.predict(frame) if labels_only else bare.segment(frame, outputs)

        for f in frames[:3]:  # warm both up (first calls allocate); by then the node sees who subscribes
            bare_call(f)
        self._feed(msgs, 20.0, 2.0, outputs)
        _pipelined_phase(bare, frames[:3], outputs, 0.0)  # warm the two-stage path too
        tally = self._rounds(bare_call, frames, msgs, outputs)
        row = _rate_row(self.args, which, size, labels_only, tally)
        bare_hz, pipe_hz, node_hz = tally.rates()
        log.info("node rate %s %s: node %.1f Hz, bare %.1f Hz (overhead %.1f%%), bare pipelined %.1f Hz "
                 "(overhead %.1f%%)", which, size, node_hz, bare_hz, 100 * row["overhead_ratio"], pipe_hz,
                 100 * row["overhead_vs_pipelined"])
        return row

    def _rounds(self, bare_call, frames, msgs: list[bytearray], outputs) -> _RateTally:
        """--rounds of: bare back to back, bare pipelined, then the node fed at --feed-factor x the faster
        bare rate so far (alternating keeps slow drifts of machine load out of the ratios)."""
        args, proc, t = self.args, self.proc, _RateTally()
        for _ in range(args.rounds):
            n, secs = bare_phase(bare_call, frames, args.phase_seconds)
            t.bare_n, t.bare_s = t.bare_n + n, t.bare_s + secs
            n, secs = _pipelined_phase(self.bare, frames, outputs, args.phase_seconds)
            t.pipe_n, t.pipe_s = t.pipe_n + n, t.pipe_s + secs
            feed_hz = args.feed_hz or args.feed_factor * max(t.bare_n / t.bare_s, t.pipe_n / t.pipe_s)
            cpu0 = (thread_cpu_seconds(proc.pid), time.process_time())
            n, secs, sent = self._feed(msgs, feed_hz, args.phase_seconds, outputs)
            for key, used in thread_cpu_seconds(proc.pid).items():
                t.node_cpu[key] = t.node_cpu.get(key, 0.0) + used - cpu0[0].get(key, 0.0)
            t.feeder_cpu += time.process_time() - cpu0[1]
            t.node_n, t.node_s = t.node_n + n, t.node_s + secs
            t.fed.append(sent / args.phase_seconds)
        return t


def _rate_row(args, which: str, size: tuple[int, int], labels_only: bool, t: _RateTally) -> dict:
    """The report row of a rate measurement: the three rates and the node's overhead against each bare one."""
    bare_hz, pipe_hz, node_hz = t.rates()
    return {"mode": "rate", "outputs": which, "frame_size": list(size),
            "bare_call": "predict" if labels_only else "segment",
            "bare_rate_hz": round(bare_hz, 2), "bare_pipelined_rate_hz": round(pipe_hz, 2),
            "node_rate_hz": round(node_hz, 2),
            "fed_rate_hz": round(float(np.mean(t.fed)), 2), "node_frames": int(t.node_n),
            "overhead_ratio": round(1.0 - node_hz / bare_hz, 4),
            "overhead_vs_pipelined": round(1.0 - node_hz / pipe_hz, 4),
            # CPU during the node phases (whole phases, drain included), per answered frame:
            # how much of the machine the node and this feeding process took.
            "node_cpu_ms_per_frame": {k: round(1e3 * v / max(t.node_n, 1), 2) for k, v in t.node_cpu.items()},
            "feeder_cpu_ms_per_frame": round(1e3 * t.feeder_cpu / max(t.node_n, 1), 2),
            "rounds": args.rounds, "phase_seconds": args.phase_seconds}


def _pipelined_phase(seg: Segmenter, frames, outputs, seconds: float) -> tuple[int, float]:
    """The node's two-stage pipeline without the node: this thread runs the network, a second one
    post-processes, through a one-slot queue. (frames completed, elapsed); at least one frame."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    done = [0]

    def post() -> None:
        while (net := handoff.get()) is not None:
            seg.postprocess(net, outputs)
            done[0] += 1

    worker = threading.Thread(target=post, name="bench_postprocess")
    t0 = time.perf_counter()
    worker.start()
    n = 0
    while n == 0 or time.perf_counter() - t0 < seconds:
        handoff.put(seg.run_network(frames[n % len(frames)]))
        n += 1
    handoff.put(None)
    worker.join()
    return done[0], time.perf_counter() - t0


def _feed(rclpy, client, pub, msgs: list[bytearray], stamp: list[int], rate_hz: float, seconds: float,
          arrivals: dict[int, dict[str, float]], outputs, proc: NodeProcess) -> tuple[int, float, int]:
    """Publish at `rate_hz` for `seconds`; (frames answered on every output in the window, window, sent).

    The window starts a tenth in (the pipeline fills) and ends with the feed; frames still in flight
    then are drained and not counted, so the count is what the node sustained.
    """
    period = 1.0 / rate_hz
    t0 = time.perf_counter()
    start, end = t0 + 0.1 * seconds, t0 + seconds
    next_t, sent, first = t0, 0, stamp[0]
    while (now := time.perf_counter()) < end:
        if now >= next_t:
            msg = msgs[sent % len(msgs)]
            set_cdr_stamp(msg, stamp[0] * NS)
            stamp[0] += 1
            pub.publish(bytes(msg))
            sent += 1
            next_t = max(next_t + period, now)  # a late publish does not cause a burst
            if not proc.alive:
                raise RuntimeError(f"the node exited (status {proc.returncode}):\n{proc.tail()}")
        rclpy.spin_once(client, timeout_sec=max(0.0, min(next_t - time.perf_counter(), 0.002)))
    drain_end = time.perf_counter() + 0.5
    while time.perf_counter() < drain_end:
        rclpy.spin_once(client, timeout_sec=0.01)
    done = [max(a.values()) for sec, a in arrivals.items() if sec >= first and len(a) == len(outputs)]
    arrivals.clear()
    return sum(start <= t < end for t in done), end - start, sent


def _wait_ready(rclpy, client, pub, subs, proc: NodeProcess, timeout: float) -> None:
    """Until the node subscribes to our frames and publishes every output (model loaded, DDS matched)."""
    ok = spin_until(rclpy, client, lambda: pub.get_subscription_count() > 0
                     and all(s.get_publisher_count() > 0 for s in subs), timeout, proc)
    if not ok:
        raise RuntimeError(f"the node did not come up within {timeout} s:\n{proc.tail()}")
    time.sleep(0.5)  # let the reliable writer-reader handshakes finish before the first frame

