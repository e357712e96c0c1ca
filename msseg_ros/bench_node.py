"""`msseg-bench node`: the real segmentation node over DDS versus the bare `Segmenter`, same frames.

The node runs as a subprocess (`python -m msseg_ros.segmentation_node --ros-args -p checkpoint:=...
-r image:=...`) in a namespace of its own; this process publishes one frame, waits until all five
outputs with that frame's stamp have arrived (lock-step: the node is never asked for more than it can
do, and no frame waits in a queue), then runs `Segmenter.segment` itself on the same frame with the
same options. Interleaving the two per frame keeps slow drifts of machine load out of the ratio.

node latency = last output received - frame published (encode, DDS both ways, decode, inference,
               encode x 5, this process's callbacks);
overhead     = median(node) - median(bare);  overhead_ratio = overhead / median(bare).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from msseg_core.bench import latency_stats, synthetic_frames
from msseg_core.inference import OUTPUTS, Segmenter
from msseg_ros.qos import apply_fastdds_profile

log = logging.getLogger(__name__)
STAMP_BASE = 1_000_000  # seconds; frame i has stamp (STAMP_BASE + i, 0)


def _sizes(text: str) -> list[tuple[int, int]]:
    from msseg_core.bench import _sizes as parse

    return parse(text)


class NodeProcess:
    """The segmentation node as a child process, stopped with SIGINT (then SIGKILL) on exit."""

    def __init__(self, namespace: str, params: dict[str, str], cache_dir: str | None = None):
        self.log_path = Path(tempfile.mkstemp(prefix="msseg_bench_node_", suffix=".log")[1])
        cmd = [sys.executable, "-m", "msseg_ros.segmentation_node", "--ros-args", "-r", f"__ns:={namespace}",
               "-r", f"image:={namespace}/image"]
        for key, value in params.items():
            cmd += ["-p", f"{key}:={value}"]
        self.cmd = cmd
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = os.environ.copy()
        if cache_dir:
            env["MSSEG_CACHE_DIR"] = str(cache_dir)  # the node's ONNX export cache, as for the bare Segmenter
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described in the module docstring; returns the report (kind 'node')."""
    apply_fastdds_profile()  # before rclpy.init, for both processes (the child inherits the variables)
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from msseg_ros.image_codec import encode_image

    checkpoint = args.checkpoint or ""
    namespace = f"/msseg_bench_{os.getpid()}"
    params = {"device": args.device, "backend": args.backend, "precision": args.precision}
    if checkpoint:
        params["checkpoint"] = str(Path(checkpoint).resolve())
    if args.threads:
        params["threads"] = str(args.threads)
    bare = Segmenter.from_checkpoint(checkpoint or None, device=args.device, precision=args.precision,
                                     backend=args.backend, threads=args.threads or None, cache_dir=args.cache_dir)
    node_proc = NodeProcess(namespace, params, args.cache_dir)
    rclpy.init()
    client = Node(f"msseg_bench_client_{os.getpid()}")
    arrivals: dict[str, dict[int, float]] = {name: {} for name in OUTPUTS}

    def callback(name):
        def cb(msg: Image) -> None:
            arrivals[name][msg.header.stamp.sec - STAMP_BASE] = time.perf_counter()

        return cb

    # Reliable publisher: matches the node's best-effort input; reliable outputs match our reliable subs.
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = client.create_publisher(Image, f"{namespace}/image", reliable)
    subs = [client.create_subscription(Image, f"{namespace}/{name}", callback(name), reliable) for name in OUTPUTS]
    results = []
    try:
        _wait_ready(rclpy, client, pub, subs, node_proc, args.startup_timeout)
        frame_id = 0
        for size in _sizes(args.sizes):
            frames = synthetic_frames(8, *size)
            node_t, bare_t, lost = [], [], 0
            for k in range(args.warmup + args.frames):
                frame = frames[k % len(frames)]
                header = Header(frame_id="camera")
                header.stamp.sec = STAMP_BASE + frame_id
                msg = encode_image(frame, "rgb8", header)
                t0 = time.perf_counter()
                pub.publish(msg)
                done = _spin_until(rclpy, client, lambda fid=frame_id: all(fid in arrivals[n] for n in OUTPUTS),
                                   args.timeout, node_proc)
                if done:
                    t_node = max(arrivals[n][frame_id] for n in OUTPUTS) - t0
                else:
                    lost += 1
                t1 = time.perf_counter()
                bare.segment(frame, OUTPUTS)
                t_bare = time.perf_counter() - t1
                if k >= args.warmup and done:
                    node_t.append(t_node)
                    bare_t.append(t_bare)
                for n in OUTPUTS:
                    arrivals[n].pop(frame_id, None)
                frame_id += 1
            row = {"frame_size": list(size), "frames": len(node_t), "lost": lost,
                   "backend": bare.describe().get("backend"), "describe": bare.describe()}
            if not node_t:
                row["error"] = f"no frame came back from the node within {args.timeout} s"
            else:
                row["node_latency_ms"] = latency_stats(node_t)["latency_ms"]
                row["bare_latency_ms"] = latency_stats(bare_t)["latency_ms"]
                n50, b50 = row["node_latency_ms"]["p50"], row["bare_latency_ms"]["p50"]
                row["overhead_ms"] = round(n50 - b50, 3)
                row["overhead_ratio"] = round((n50 - b50) / b50, 4)
                row["paired_overhead_ms_p50"] = round(float(np.median(np.subtract(node_t, bare_t))) * 1e3, 3)
            results.append(row)
            log.info("node %s: %s", size, row.get("error") or
                     f"node p50 {row['node_latency_ms']['p50']:.2f} ms, bare p50 {row['bare_latency_ms']['p50']:.2f} "
                     f"ms, overhead {100 * row['overhead_ratio']:.1f}%")
    except RuntimeError as exc:
        results.append({"frame_size": None, "error": str(exc)})
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node_proc.stop()
    return {"kind": "node", "node_command": node_proc.cmd, "node_log": str(node_proc.log_path), "results": results}


def _spin_until(rclpy, node, predicate, timeout: float, proc: NodeProcess) -> bool:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            return False
        if not proc.alive():
            raise RuntimeError(f"the node exited (status {proc.proc.returncode}):\n{proc.tail()}")
        rclpy.spin_once(node, timeout_sec=0.005)
    return True


def _wait_ready(rclpy, client, pub, subs, proc: NodeProcess, timeout: float) -> None:
    """Until the node subscribes to our frames and publishes every output (model loaded, DDS matched)."""
    ok = _spin_until(rclpy, client, lambda: pub.get_subscription_count() > 0
                     and all(s.get_publisher_count() > 0 for s in subs), timeout, proc)
    if not ok:
        raise RuntimeError(f"the node did not come up within {timeout} s:\n{proc.tail()}")
    time.sleep(0.5)  # let the reliable writer-reader handshakes finish before the first frame
