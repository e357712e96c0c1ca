"""`msseg-bench node`: the real segmentation node over DDS versus the bare `Segmenter`, same frames.

The `msseg-bench` console script is this module's `main`: it runs `node` and hands every other
subcommand (model, segmenter) to `msseg_core.bench.main`, so msseg_core never imports ROS.

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
          the frames whose every subscribed output came back.
          overhead_ratio = 1 - node rate / bare rate (the issue's figure: the node against one
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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msseg_core import bench
from msseg_core.backends import default_threads
from msseg_core.bench import latency_stats, parse_sizes, split_list, synthetic_frames
from msseg_core.inference import OUTPUTS, Segmenter, resolve_device
from msseg_core.zoo import resolve_checkpoint
from msseg_ros import topics
from msseg_ros.cdr import cdr_stamp, set_cdr_stamp

if TYPE_CHECKING:  # rclpy is imported only when `node` runs: `msseg-bench model` needs no ROS
    from msseg_ros.graph import NodeProcess

log = logging.getLogger(__name__)
STAMP_BASE = 1_000_000  # seconds; frame i has stamp (STAMP_BASE + i, 0)
NS = 1_000_000_000
RATE_OUTPUTS = {"labels": ("labels",), "all": OUTPUTS}  # what the client subscribes to, per rate row


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a process so far, in all ("total") and per named thread
    (msseg_input, msseg_worker (every stream's), msseg_publisher; the rest under "other"). Linux /proc;
    {} elsewhere."""
    out = {"total": 0.0, "msseg_input": 0.0, "msseg_worker": 0.0, "msseg_publisher": 0.0, "other": 0.0}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        secs = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out["total"] += secs
        name = name.rstrip("0123456789") if name.startswith("msseg_worker") else name
        out[name if name in out else "other"] += secs
    return out


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described in the module docstring; returns the report (kind 'node')."""
    modes = split_list(args.modes)
    asked = set(split_list(args.rate_outputs)) | set(split_list(args.lockstep_outputs))
    unknown = sorted(set(modes) - {"lockstep", "rate"}) + sorted(asked - set(RATE_OUTPUTS))
    if unknown or not modes:
        print(f"msseg-bench node: unknown --modes/--*-outputs {unknown or modes}; modes are lockstep, rate; "
              f"rate outputs are {', '.join(RATE_OUTPUTS)}", file=sys.stderr)
        raise SystemExit(2)
    from msseg_ros.qos import apply_fastdds_profile

    apply_fastdds_profile()  # before rclpy.init, for both processes (the child inherits the variables)
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from msseg_ros.graph import NodeProcess, ros_arguments
    from msseg_ros.image_codec import encode_image

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
        frame_id = 0
        for which in split_list(args.lockstep_outputs) if "lockstep" in modes else []:
            outputs = RATE_OUTPUTS[which]
            node.subscribe_only(outputs, args.startup_timeout)
            echo.subscribe_only(outputs, args.startup_timeout)
            labels_only = outputs == ("labels",)
            for size in parse_sizes(args.sizes):
                frames = synthetic_frames(8, *size)
                node_t, bare_t, floor_t, lost = [], [], [], 0
                for k in range(args.warmup + args.frames):
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
                    frame_id += 1
                row = {"mode": "lockstep", "outputs": which, "bare_call": "predict" if labels_only else "segment",
                       "frame_size": list(size), "frames": len(node_t), "lost": lost,
                       "backend": bare.describe().get("backend"), "describe": bare.describe()}
                _lockstep_figures(row, node_t, bare_t, floor_t, args.timeout)
                results.append(row)
                log.info("node %s %s: %s", which, size, row.get("error") or
                         f"node p50 {row['node_latency_ms']['p50']:.2f} ms, bare p50 "
                         f"{row['bare_latency_ms']['p50']:.2f} ms, overhead {100 * row['overhead_ratio']:.1f}%")
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


def node_params(args: argparse.Namespace) -> dict[str, Any]:
    """The node's parameters for the bench's options: the bare Segmenter's settings (a zoo name becomes
    its packaged file's absolute path, which the child process resolves the same way), then
    --node-params (e.g. pipelined:=false, to compare node settings)."""
    params: dict[str, Any] = {"device": args.device, "backend": args.backend, "precision": args.precision}
    if args.checkpoint:
        params["checkpoint"] = str(resolve_checkpoint(args.checkpoint).resolve())
    if args.threads:
        params["threads"] = args.threads
    for item in split_list(args.node_params):
        key, _, value = item.partition(":=")
        params[key.strip()] = value.strip()
    return params


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
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from msseg_ros.image_codec import encode_image

    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    rows = []
    stamp = [STAMP_BASE + 500_000]
    arrivals: dict[int, dict[str, float]] = {}  # stamp sec -> output -> arrival time
    for which in split_list(args.rate_outputs):
        outputs = RATE_OUTPUTS[which]

        def callback(name):
            def cb(data: bytes) -> None:
                arrivals.setdefault(cdr_stamp(data) // NS, {})[name] = time.perf_counter()

            return cb

        subs = [client.create_subscription(Image, topics.in_namespace(namespace, name), callback(name), reliable,
                                           raw=True) for name in outputs]
        _wait_ready(rclpy, client, pub, subs, proc, args.startup_timeout)
        for size in parse_sizes(args.sizes):
            frames = synthetic_frames(8, *size)
            msgs = [bytearray(serialize_message(encode_image(f, "rgb8", Header(frame_id="camera")))) for f in frames]

            labels_only = outputs == ("labels",)

            def bare_call(frame, outputs=outputs, labels_only=labels_only):
                return bare.predict(frame) if labels_only else bare.segment(frame, outputs)

            for f in frames[:3]:  # warm both up (first calls allocate); by then the node sees who subscribes
                bare_call(f)
            _feed(rclpy, client, pub, msgs, stamp, 20.0, 2.0, arrivals, outputs, proc)
            _pipelined_phase(bare, frames[:3], outputs, 0.0)  # warm the two-stage path too
            bare_n = bare_s = pipe_n = pipe_s = node_n = node_s = feeder_cpu = 0.0
            node_cpu: dict[str, float] = {}
            fed = []
            for _ in range(args.rounds):
                n, secs = bare_phase(bare_call, frames, args.phase_seconds)
                bare_n, bare_s = bare_n + n, bare_s + secs
                n, secs = _pipelined_phase(bare, frames, outputs, args.phase_seconds)
                pipe_n, pipe_s = pipe_n + n, pipe_s + secs
                feed_hz = args.feed_factor * max(bare_n / bare_s, pipe_n / pipe_s)
                cpu0 = (thread_cpu_seconds(proc.pid), time.process_time())
                n, secs, sent = _feed(rclpy, client, pub, msgs, stamp, feed_hz, args.phase_seconds, arrivals,
                                      outputs, proc)
                for key, used in thread_cpu_seconds(proc.pid).items():
                    node_cpu[key] = node_cpu.get(key, 0.0) + used - cpu0[0].get(key, 0.0)
                feeder_cpu += time.process_time() - cpu0[1]
                node_n, node_s = node_n + n, node_s + secs
                fed.append(sent / args.phase_seconds)
            bare_hz, pipe_hz, node_hz = bare_n / bare_s, pipe_n / pipe_s, node_n / node_s
            rows.append({"mode": "rate", "outputs": which, "frame_size": list(size),
                         "bare_call": "predict" if labels_only else "segment",
                         "bare_rate_hz": round(bare_hz, 2), "bare_pipelined_rate_hz": round(pipe_hz, 2),
                         "node_rate_hz": round(node_hz, 2),
                         "fed_rate_hz": round(float(np.mean(fed)), 2), "node_frames": int(node_n),
                         "overhead_ratio": round(1.0 - node_hz / bare_hz, 4),
                         "overhead_vs_pipelined": round(1.0 - node_hz / pipe_hz, 4),
                         # CPU during the node phases (whole phases, drain included), per answered frame:
                         # how much of the machine the node and this feeding process took.
                         "node_cpu_ms_per_frame": {k: round(1e3 * v / max(node_n, 1), 2) for k, v in node_cpu.items()},
                         "feeder_cpu_ms_per_frame": round(1e3 * feeder_cpu / max(node_n, 1), 2),
                         "rounds": args.rounds, "phase_seconds": args.phase_seconds})
            log.info("node rate %s %s: node %.1f Hz, bare %.1f Hz (overhead %.1f%%), bare pipelined %.1f Hz "
                     "(overhead %.1f%%)", which, size, node_hz, bare_hz, 100 * rows[-1]["overhead_ratio"], pipe_hz,
                     100 * rows[-1]["overhead_vs_pipelined"])
        for sub in subs:
            client.destroy_subscription(sub)
    return rows


def bare_phase(call, frames, seconds: float) -> tuple[int, float]:
    """Back-to-back calls for `seconds`: (calls, elapsed)."""
    n, t0 = 0, time.perf_counter()
    while True:
        call(frames[n % len(frames)])
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n, elapsed


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


def spin_until(rclpy, node, predicate, timeout: float, proc: NodeProcess) -> bool:
    """Spin `node` until `predicate()` holds (True) or `timeout` passes (False); the node under test
    exiting meanwhile is an error with its last output lines."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        if not proc.alive:
            raise RuntimeError(f"the node exited (status {proc.returncode}):\n{proc.tail()}")
        rclpy.spin_once(node, timeout_sec=0.005)
    return True


def _wait_ready(rclpy, client, pub, subs, proc: NodeProcess, timeout: float) -> None:
    """Until the node subscribes to our frames and publishes every output (model loaded, DDS matched)."""
    ok = spin_until(rclpy, client, lambda: pub.get_subscription_count() > 0
                     and all(s.get_publisher_count() > 0 for s in subs), timeout, proc)
    if not ok:
        raise RuntimeError(f"the node did not come up within {timeout} s:\n{proc.tail()}")
    time.sleep(0.5)  # let the reliable writer-reader handshakes finish before the first frame


# -- the msseg-bench console script -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """`msseg-bench node`'s options."""
    n = argparse.ArgumentParser(prog="msseg-bench node", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    node = n.add_argument_group("the node and the bare Segmenter (the same settings)")
    node.add_argument("--checkpoint", default="", help="checkpoint ('' = the packaged model)")
    node.add_argument("--backend", default="auto", help="node and bare Segmenter backend")
    node.add_argument("--precision", default="fp32")
    node.add_argument("--node-params", default="",
                      help="more node parameters, e.g. pipelined:=false,road_ego_only:=true")
    frames = n.add_argument_group("frames and measurements")
    frames.add_argument("--sizes", default="360x480,720x960", help="frame sizes HxW")
    frames.add_argument("--modes", default="lockstep,rate", help="lockstep (latency) and/or rate (throughput)")
    frames.add_argument("--frames", type=int, default=30, help="lockstep: timed frames per size")
    frames.add_argument("--lockstep-outputs", default="labels,all",
                        help="lockstep rows: labels (vs Segmenter.predict) and/or all five outputs (vs segment)")
    rate = n.add_argument_group("rate")
    rate.add_argument("--rate-outputs", default="labels,all",
                      help="rows: labels (vs Segmenter.predict) and/or all five outputs (vs Segmenter.segment)")
    rate.add_argument("--phase-seconds", type=float, default=5.0, help="length of each bare / node phase")
    rate.add_argument("--rounds", type=int, default=3, help="bare / bare pipelined / node phases per row")
    rate.add_argument("--feed-factor", type=float, default=1.25,
                      help="frames published per frame of the faster bare rate")
    cams = n.add_argument_group("cameras (instead of lockstep and rate)")
    cams.add_argument("--cameras", default="", help="e.g. 1,2,4: one node with N cameras against N single-camera "
                                                    "nodes (aggregate frames/s and RSS), for each N")
    waits = n.add_argument_group("waits")
    waits.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one frame's outputs")
    waits.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the node to come up")
    bench.add_common_arguments(n, iters=30, warmup=3, max_seconds=600.0)
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `msseg-bench`: `node` here, every other subcommand in msseg_core.bench."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "node":
        return bench.main(argv)
    args = build_parser().parse_args(argv[1:])
    args.command = "node"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        import rclpy  # noqa: F401
    except ImportError as exc:
        print(f"msseg-bench node needs ROS 2 (rclpy): {exc}", file=sys.stderr)
        return 2
    if args.cameras:
        from msseg_ros.bench_cameras import run_cameras, write_cameras_report

        report = run_cameras(args)
    else:
        report = run(args)
    report["env"] = bench.environment(resolve_device(args.device), args.threads or default_threads())
    report["args"] = vars(args)
    if args.cameras:
        write_cameras_report(report, args)
    else:
        bench.write_report(report, args)
    failed = [r for r in report["results"] if "error" in r]
    return 1 if failed and len(failed) == len(report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
