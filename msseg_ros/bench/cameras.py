"""`msseg-bench node --cameras 1,2,4`: one segmentation node serving N cameras against N single-camera
nodes on the same frames, for each N: aggregate frames/s and resident memory (bench_node's docstring
says how). What a vehicle with N cameras gets from one model in one process instead of N."""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msseg_core.bench.options import parse_sizes, split_list
from msseg_core.bench.report import error_row, to_markdown
from msseg_core.bench.segmenter import synthetic_frames
from msseg_core.runtime.segmenter import Segmenter
from msseg_ros.bench.common import NS, STAMP_BASE, bare_phase, node_params, spin_until, thread_cpu_seconds
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import cdr_stamp, set_cdr_stamp
from msseg_ros.transport.graph import NodeProcess, ros_arguments

log = logging.getLogger(__name__)
CONFIGURATIONS = ("one_node", "separate_nodes")


@dataclass
class Setup:
    """One configuration under test: its node processes and, per camera, where frames go and labels come from."""

    procs: list[NodeProcess]
    image_topics: list[str]
    label_topics: list[str]
    pubs: list[Any] = field(default_factory=list)
    subs: list[Any] = field(default_factory=list)
    arrivals: dict[int, float] = field(default_factory=dict)  # stamp (s) -> labels arrival


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return float("nan"), float("nan")


def run_cameras(args: argparse.Namespace) -> dict:
    """The comparison for every N of --cameras; returns the report (kind 'node_cameras')."""
    counts = [int(n) for n in split_list(args.cameras)]
    if not counts or min(counts) < 1:
        raise SystemExit(f"msseg-bench node: --cameras wants camera counts >= 1, e.g. 1,2,4; got {args.cameras!r}")
    from msseg_ros.transport.qos import apply_fastdds_profile

    apply_fastdds_profile()  # before rclpy.init, for every process (the children inherit the variables)
    import rclpy
    from rclpy.node import Node

    bare = Segmenter.from_checkpoint(args.checkpoint or None, device=args.device, precision=args.precision,
                                     backend=args.backend, threads=args.threads or None, cache_dir=args.cache_dir)
    rclpy.init()
    client = Node(f"msseg_bench_cameras_{os.getpid()}")
    results: list[dict] = []
    try:
        for n in counts:
            try:
                results += _compare(args, rclpy, client, bare, n)
            except RuntimeError as exc:
                results.append({"mode": "cameras", "cameras": n, "error": str(exc)})
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
    return {"kind": "node_cameras", "describe": bare.describe(), "results": results}


def _start(args: argparse.Namespace, n: int) -> dict[str, Setup]:
    base = f"/msseg_bench_cams_{os.getpid()}_{n}"
    env = {"MSSEG_CACHE_DIR": str(args.cache_dir)} if args.cache_dir else None
    params, names = node_params(args), [f"cam{i}" for i in range(n)]
    one = NodeProcess("segmentation_node", ros_arguments(f"{base}_one", params={**params, "cameras": names}), env=env)
    separate = [NodeProcess("segmentation_node", ros_arguments(f"{base}_sep{i}", params=params), env=env)
                for i in range(n)]
    return {
        "one_node": Setup([one], [topics.in_namespace(f"{base}_one", f"{c}/{topics.IMAGE}") for c in names],
                          [topics.in_namespace(f"{base}_one", f"{c}/{topics.LABELS}") for c in names]),
        "separate_nodes": Setup(separate, [topics.in_namespace(f"{base}_sep{i}", topics.IMAGE) for i in range(n)],
                                [topics.in_namespace(f"{base}_sep{i}", topics.LABELS) for i in range(n)]),
    }


def _compare(args, rclpy, client, bare: Segmenter, n: int) -> list[dict]:
    """One node with n cameras against n single-camera nodes: a row per frame size."""
    setups = _start(args, n)
    rows = []
    try:
        _connect(args, rclpy, client, setups)
        stamp = [STAMP_BASE + 700_000 + 10_000 * n]
        for size in parse_sizes(args.sizes):
            rows.append(_compare_size(args, rclpy, client, bare, setups, n, size, stamp))
    finally:
        _tear_down(client, setups)
    return rows


def _connect(args, rclpy, client, setups: dict[str, Setup]) -> None:
    """Publishers to every camera's image and raw subscriptions to its labels (only the stamp is read),
    then wait until every node has matched both and is alive."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    for setup in setups.values():
        def on_labels(data: bytes, arrivals=setup.arrivals) -> None:  # only the stamp is read
            arrivals[cdr_stamp(data) // NS] = time.perf_counter()

        setup.pubs = [client.create_publisher(Image, t, reliable) for t in setup.image_topics]
        setup.subs = [client.create_subscription(Image, t, on_labels, reliable, raw=True)
                      for t in setup.label_topics]
    for setup in setups.values():
        ok = spin_until(rclpy, client, lambda s=setup: all(p.get_subscription_count() > 0 for p in s.pubs)
                         and all(x.get_publisher_count() > 0 for x in s.subs), args.startup_timeout, setup.procs[0])
        if not ok or not all(p.alive for p in setup.procs):
            raise RuntimeError(f"the nodes did not come up within {args.startup_timeout} s:\n"
                               f"{setup.procs[0].tail()}")
    time.sleep(0.5)  # let the reliable writer-reader handshakes finish before the first frame


def _compare_size(args, rclpy, client, bare: Segmenter, setups: dict[str, Setup], n: int, size: tuple[int, int],
                  stamp: list[int]) -> dict:
    """The row of one frame size: every camera is fed at --feed-factor x the bare Segmenter's rate on
    these frames, so that either configuration is overloaded."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from msseg_ros.transport.image_codec import encode_image

    frames = synthetic_frames(8, *size)
    msgs = [bytearray(serialize_message(encode_image(f, "rgb8", Header(frame_id="camera")))) for f in frames]
    calls, secs = bare_phase(bare.predict, frames, args.phase_seconds)
    bare_hz = calls / secs
    feed_hz = args.feed_factor * bare_hz  # per camera: each camera alone would keep a node busy
    for setup in setups.values():  # warm-up: first frames allocate; the nodes see who subscribes
        _feed(rclpy, client, setup, msgs, stamp, feed_hz, 2.0)
    totals = _alternate_rounds(args, rclpy, client, setups, n, msgs, stamp, feed_hz)
    row: dict[str, Any] = {"mode": "cameras", "cameras": n, "frame_size": list(size),
                           "bare_rate_hz": round(bare_hz, 2), "fed_rate_hz_per_camera": round(feed_hz, 2),
                           "rounds": args.rounds, "phase_seconds": args.phase_seconds}
    for name, t in totals.items():
        row[name] = {"processes": len(setups[name].procs), "rate_hz": round(t["frames"] / t["seconds"], 2),
                     "frames": t["frames"],
                     "per_camera_hz": [round(c / t["seconds"], 2) for c in t["per_camera"]],
                     "rss_mb": round(max(t["rss_mb"]), 1), "peak_rss_mb": round(t["peak_rss_mb"], 1),
                     "cpu_ms_per_frame": round(1e3 * t["cpu_s"] / max(t["frames"], 1), 2)}
    one, sep = row["one_node"], row["separate_nodes"]
    row["rate_ratio"] = round(one["rate_hz"] / sep["rate_hz"], 3) if sep["rate_hz"] else None
    row["rss_ratio"] = round(one["rss_mb"] / sep["rss_mb"], 3)
    log.info("cameras %d %s: one node %.1f Hz %.0f MiB, %d nodes %.1f Hz %.0f MiB", n, size, one["rate_hz"],
             one["rss_mb"], n, sep["rate_hz"], sep["rss_mb"])
    return row


def _alternate_rounds(args, rclpy, client, setups: dict[str, Setup], n: int, msgs: list[bytearray],
                      stamp: list[int], feed_hz: float) -> dict[str, dict[str, Any]]:
    """--rounds phases of each configuration, in alternating order (so neither always goes first);
    per configuration: frames and seconds counted, frames per camera, RSS after each phase, the peak
    RSS and the CPU its processes took."""
    totals = {name: {"frames": 0, "seconds": 0.0, "per_camera": [0] * n, "rss_mb": [], "peak_rss_mb": 0.0,
                     "cpu_s": 0.0} for name in setups}
    for k in range(args.rounds):
        for name in (CONFIGURATIONS if k % 2 == 0 else CONFIGURATIONS[::-1]):
            setup, t = setups[name], totals[name]
            cpu0 = sum(thread_cpu_seconds(p.pid).get("total", 0.0) for p in setup.procs)
            per_camera, window = _feed(rclpy, client, setup, msgs, stamp, feed_hz, args.phase_seconds)
            t["cpu_s"] += sum(thread_cpu_seconds(p.pid).get("total", 0.0) for p in setup.procs) - cpu0
            t["frames"] += sum(per_camera)
            t["seconds"] += window
            t["per_camera"] = [a + b for a, b in zip(t["per_camera"], per_camera, strict=True)]
            memory = [memory_mb(p.pid) for p in setup.procs]
            t["rss_mb"].append(sum(m[0] for m in memory))
            t["peak_rss_mb"] = max(t["peak_rss_mb"], sum(m[1] for m in memory))
    return totals


def _tear_down(client, setups: dict[str, Setup]) -> None:
    """Drop this client's ends, interrupt every node, then wait for them all (interrupting all first
    lets them shut down side by side)."""
    for setup in setups.values():
        for pub in setup.pubs:
            client.destroy_publisher(pub)
        for sub in setup.subs:
            client.destroy_subscription(sub)
        for proc in setup.procs:
            proc.interrupt()
    for setup in setups.values():
        for proc in setup.procs:
            proc.close()


def _feed(rclpy, client, setup: Setup, msgs: list[bytearray], stamp: list[int], rate_hz: float,
          seconds: float) -> tuple[list[int], float]:
    """Publish to every camera at `rate_hz` each for `seconds` (cameras in turn); (labels answered per
    camera within the window, window). The window starts a tenth in; frames in flight at its end drain
    uncounted."""
    n = len(setup.pubs)
    period = 1.0 / (rate_hz * n)
    t0 = time.perf_counter()
    start, end = t0 + 0.1 * seconds, t0 + seconds
    next_t, sent, camera_of = t0, 0, {}
    while (now := time.perf_counter()) < end:
        if now >= next_t:
            msg = msgs[(sent // n) % len(msgs)]
            set_cdr_stamp(msg, stamp[0] * NS)
            camera_of[stamp[0]] = sent % n
            setup.pubs[sent % n].publish(bytes(msg))
            stamp[0] += 1
            sent += 1
            next_t = max(next_t + period, now)  # a late publish does not cause a burst
            if sent % 50 == 0 and not all(p.alive for p in setup.procs):
                dead = next(p for p in setup.procs if not p.alive)
                raise RuntimeError(f"a node exited (status {dead.returncode}):\n{dead.tail()}")
        rclpy.spin_once(client, timeout_sec=max(0.0, min(next_t - time.perf_counter(), 0.002)))
    drain_end = time.perf_counter() + 0.5
    while time.perf_counter() < drain_end:
        rclpy.spin_once(client, timeout_sec=0.01)
    per_camera = [0] * n
    for sec, arrived in setup.arrivals.items():
        if sec in camera_of and start <= arrived < end:
            per_camera[camera_of[sec]] += 1
    setup.arrivals.clear()
    return per_camera, end - start


def cameras_markdown(report: dict) -> str:
    """The environment lines of every msseg-bench report, then one row per camera count and frame size."""
    lines = [to_markdown(report).rstrip("\n"),
             "| cameras | frame | bare Hz | fed Hz / camera | one node Hz | one node RSS MiB (peak) "
             "| N nodes Hz | N nodes RSS MiB (peak) | rate one / N | RSS one / N | CPU ms/frame one / N |",
             "|" + "---|" * 11]
    for r in report["results"]:
        if "error" in r:
            lines.append(error_row([str(r["cameras"])], r["error"][:80], 11))
            continue
        one, sep = r["one_node"], r["separate_nodes"]
        lines.append(f"| {r['cameras']} | {'x'.join(map(str, r['frame_size']))} | {r['bare_rate_hz']:.1f} "
                     f"| {r['fed_rate_hz_per_camera']:.1f} | {one['rate_hz']:.1f} | {one['rss_mb']:.0f} "
                     f"({one['peak_rss_mb']:.0f}) | {sep['rate_hz']:.1f} | {sep['rss_mb']:.0f} "
                     f"({sep['peak_rss_mb']:.0f}) "
                     f"| {r['rate_ratio']:.2f} | {r['rss_ratio']:.2f} "
                     f"| {one['cpu_ms_per_frame']:.1f} / {sep['cpu_ms_per_frame']:.1f} |")
    return "\n".join(lines) + "\n"
