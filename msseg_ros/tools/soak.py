"""Soak test: the segmentation node under sustained overload; its memory, latency and frame accounting.

    python -m msseg_ros.tools.soak --duration 600 --rate-factor 3 --json out.json [--threads 1] [--checkpoint X]

Starts the node the way users do (a subprocess: `segmentation_node --ros-args ...`),
measures its processing rate (one frame at a time, round trip to the last output; then the rate it
sustains when fed twice that for 5 s: the larger), then publishes frames at `rate-factor` times that
rate for `duration` seconds while sampling the node's
resident memory and timing every answered frame (publish -> every subscribed output received).

At the end it reports, for the overload phase: frames published, received / processed / dropped /
invalid / errors / skipped (the node's /diagnostics counters, once it is idle), memory growth after
the warm-up, end-to-end latency percentiles of the processed frames (also per third of the run, to
show the trend), and checks:

- received == processed + dropped + invalid + errors + skipped, with invalid = errors = skipped = 0;
- resident memory after the warm-up grows less than --max-growth percent (mean of the last 10 s
  against the mean of the first 10 s after the warm-up);
- latency p99 below --max-latency seconds; the node alive throughout and exiting cleanly on SIGINT.

Exit status 0 when every check passes, 1 otherwise; --json writes the whole report.
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from msseg_core.io import write_text_atomic
from msseg_core.runtime.engines.torch_ort import cpu_flags, cpu_name
from msseg_ros.node.pipeline import COUNTERS, all_accounted
from msseg_ros.transport import topics

if TYPE_CHECKING:  # graph imports rclpy: the soak imports it only when it runs
    from msseg_ros.transport.graph import NodeProcess

ALL_OUTPUTS = topics.OUTPUTS


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = np.asarray(values, dtype=np.float64) * 1e3
    stats = {f"p{q}": float(np.percentile(v, q)) for q in (50, 90, 99)}
    return {"n": int(v.size), **{k: round(x, 2) for k, x in stats.items()}, "max": round(float(v.max()), 2),
            "mean": round(float(v.mean()), 2)}


def _frames(width: int, height: int, count: int = 8, seed: int = 0) -> list[array.array]:
    """A few smooth random rgb8 frames (as array.array, what rclpy stores without a per-byte check)."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        data = array.array("B")
        data.frombytes(np.ascontiguousarray(rgb).tobytes())
        frames.append(data)
    return frames


class MemorySampler:
    """Resident memory of a process, sampled in a background thread: [(monotonic time, bytes)]."""

    def __init__(self, pid: int, period: float = 0.5):
        import psutil

        self.rss: list[tuple[float, int]] = []
        self._proc = psutil.Process(pid)
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss_sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self._period):
            try:
                self.rss.append((time.monotonic(), self._proc.memory_info().rss))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class SoakClient:
    """Camera side and observer: publishes frames, times their outputs, reads the node's diagnostics."""

    def __init__(self, namespace: str, outputs: Sequence[str], reliability: str, width: int, height: int):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from msseg_ros.transport.graph import PrivateContext

        self._Image = Image
        self.namespace = namespace.rstrip("/")
        self.node_fqn = f"{self.namespace}/msseg_node"
        self.outputs = tuple(outputs)
        self.width, self.height = width, height
        self.frames = _frames(width, height)
        self._ros = PrivateContext("msseg_soak_camera")
        self.node = self._ros.node
        policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        self.pub = self.node.create_publisher(Image, topics.in_namespace(self.namespace, topics.IMAGE),
                                              QoSProfile(depth=5, reliability=policy))
        self._lock = threading.Condition()
        self._pending: dict[tuple[int, int], tuple[float, set[str]]] = {}
        self.latencies: list[tuple[float, float, tuple]] = []  # (publish time, seconds to the last output, stamp)
        self.incomplete = 0  # frames with some but not all outputs when given up on
        self.published = 0
        self.status: dict[str, str] | None = None
        self._status_seq = 0
        self._seq = 0
        for name in self.outputs:
            self.node.create_subscription(Image, topics.in_namespace(self.namespace, name),
                                          lambda m, n=name: self._on_output(n, m),
                                          QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, 10)

    # -- frames -------------------------------------------------------------------------------
    def publish(self) -> tuple[int, int]:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        self._seq += 1
        key = (1_800_000_000 + self._seq // 1000, (self._seq % 1000) * 1_000_000)
        msg = self._Image(header=Header(stamp=Time(sec=key[0], nanosec=key[1]), frame_id="soak_camera"),
                          height=self.height, width=self.width, encoding="rgb8", is_bigendian=0, step=self.width * 3)
        msg.data = self.frames[self._seq % len(self.frames)]
        with self._lock:
            self._pending[key] = (time.monotonic(), set(self.outputs))
        self.pub.publish(msg)
        self.published += 1
        return key

    def _on_output(self, name: str, msg) -> None:
        now = time.monotonic()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            entry = self._pending.get(key)
            if entry is None:
                return
            entry[1].discard(name)
            if not entry[1]:
                del self._pending[key]
                self.latencies.append((entry[0], now - entry[0], key))
                self._lock.notify_all()

    def forget_older_than(self, seconds: float) -> None:
        """Frames the node dropped never come back: stop waiting for them."""
        limit = time.monotonic() - seconds
        with self._lock:
            old = [k for k, (t, _) in self._pending.items() if t < limit]
            for k in old:
                if len(self._pending[k][1]) < len(self.outputs):
                    self.incomplete += 1
                del self._pending[k]

    def round_trip(self, timeout: float = 30.0) -> float:
        """Publish one frame and wait for all its outputs: the seconds it took."""
        key = self.publish()
        with self._lock:
            if not self._lock.wait_for(lambda: key not in self._pending, timeout):
                del self._pending[key]
                raise TimeoutError(f"no outputs for a frame within {timeout} s")
            return next(d for t, d, k in reversed(self.latencies) if k == key)

    # -- diagnostics --------------------------------------------------------------------------
    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.node_fqn}:"):
                with self._lock:
                    self.status = {kv.key: kv.value for kv in status.values}
                    self._status_seq += 1
                    self._lock.notify_all()

    def settled_counters(self, timeout: float = 30.0) -> dict[str, int]:
        """Counters from a status sent after this call once every received frame is accounted for."""
        deadline = time.monotonic() + timeout
        with self._lock:
            after = self._status_seq
            while True:
                if self._status_seq > after and self.status is not None:
                    c = {k: int(self.status[k]) for k in COUNTERS}
                    if all_accounted(c):
                        return c
                    after = self._status_seq
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the node's counters did not settle within {timeout} s: {self.status}")
                self._lock.wait(remaining)

    def close(self) -> None:
        self._ros.close()


def _publish_at(client: SoakClient, rate: float, duration: float, stop: threading.Event) -> None:
    """Publish at `rate` Hz on an absolute schedule for `duration` s (never bursting to catch up more than 1 s)."""
    period = 1.0 / rate
    start = time.monotonic()
    next_t = start
    last_purge = start
    while not stop.is_set():
        now = time.monotonic()
        if now - start >= duration:
            return
        if now < next_t:
            time.sleep(min(next_t - now, 0.01))
            continue
        client.publish()
        next_t += period
        if now - next_t > 1.0:
            next_t = now
        if now - last_purge > 1.0:
            client.forget_older_than(10.0)
            last_purge = now


@dataclass(frozen=True)
class _Tally:
    """Where the client's counts stood when the overload began: the report covers only what follows."""

    counters: dict[str, int]
    published: int
    answered: int

    @classmethod
    def now(cls, client: SoakClient) -> _Tally:
        counters = client.settled_counters()
        return cls(counters, client.published, len(client.latencies))


def run_soak(duration: float = 600.0, rate_factor: float = 3.0, checkpoint: str = "", device: str = "cpu",
             backend: str = "auto", threads: int = 0, width: int = 480, height: int = 360,
             outputs: Sequence[str] = ALL_OUTPUTS, reliability: str = "best_effort", warmup: float | None = None,
             max_growth: float = 5.0, max_latency: float = 1.0, calibration_frames: int = 20,
             calibration_s: float = 5.0,
             namespace: str = "/msseg_soak", startup_timeout: float = 180.0, log=print) -> dict[str, Any]:
    """Run the soak; returns the report (see the module docstring). `log` gets progress lines."""
    from msseg_ros.transport.graph import NodeProcess, ros_arguments
    from msseg_ros.transport.qos import apply_fastdds_profile

    apply_fastdds_profile()  # before any participant: frames of several hundred KB
    warmup = max(5.0, 0.1 * duration) if warmup is None else warmup
    params = {k: v for k, v in {"checkpoint": checkpoint, "device": device, "backend": backend,
                                "threads": threads}.items() if v not in ("", None)}
    node = NodeProcess("segmentation_node", ros_arguments(namespace, params=params))
    memory: MemorySampler | None = None
    client = None
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()} ({' '.join(cpu_flags()) or 'no ISA flags read'}), {platform.machine()}, "
                   f"{os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "node_command": " ".join(node.cmd), "frame": f"{width}x{height} rgb8", "outputs": list(outputs),
        "duration_s": duration, "warmup_s": warmup, "rate_factor": rate_factor, "reliability": reliability,
    }
    try:
        node.wait_for_output("subscribed to", startup_timeout)
        client = SoakClient(namespace, outputs, reliability, width, height)
        _await_first_answer(client, 60.0)
        service, sustained = _measure_node_rate(client, calibration_frames, calibration_s)
        node_rate = max(1.0 / service, sustained)
        rate = rate_factor * node_rate
        report.update(service_time_ms=round(service * 1e3, 2), lockstep_rate_hz=round(1 / service, 2),
                      sustained_rate_hz=round(sustained, 2), node_rate_hz=round(node_rate, 2),
                      input_rate_target_hz=round(rate, 2))
        log(f"node answers a frame in {service * 1e3:.1f} ms in lock-step ({1 / service:.1f} Hz) and sustains "
            f"{sustained:.1f} Hz; publishing at {rate:.1f} Hz ({rate_factor:g}x) for {duration:.0f} s")
        start = _Tally.now(client)
        memory = MemorySampler(node.pid)
        t0, elapsed = _overload(client, node, memory, rate, duration, start, log)
        time.sleep(2.0)  # the last frames in flight
        after = client.settled_counters()
        client.forget_older_than(0.0)
        traffic, lat = _traffic_report(client, start, after, t0, elapsed)
        memory.stop()
        report.update(**traffic, rss_mib=_memory_report(memory.rss, t0, warmup),
                      **_latency_report(client, lat, elapsed))
    finally:
        _shut_down(node, client, memory, report)
    report["checks"] = _checks(report, max_growth, max_latency)
    report["ok"] = all(report["checks"].values())
    return report


def _await_first_answer(client: SoakClient, timeout: float) -> None:
    """Round trips of one frame until one is answered: discovery has matched both ways."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.round_trip(timeout=1.0)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not answer within {timeout:g} s") from None


def _measure_node_rate(client: SoakClient, calibration_frames: int, calibration_s: float) -> tuple[float, float]:
    """(median lock-step service time in s, sustained pipelined rate in Hz) of the node.

    The first 5 lock-step round trips only warm the node up. Pipelined, the node answers faster than
    in lock-step: the sustained rate is what it answers when fed twice the lock-step rate for
    `calibration_s` seconds; the soak takes the larger of the two as the node's rate."""
    times = [client.round_trip() for _ in range(5 + calibration_frames)][5:]
    service = float(np.median(times))
    n_lat, t_cal = len(client.latencies), time.monotonic()
    _publish_at(client, 2.0 / service, calibration_s, threading.Event())
    time.sleep(1.0)
    sustained = (len(client.latencies) - n_lat) / (time.monotonic() - t_cal)
    return service, sustained


def _overload(client: SoakClient, node: NodeProcess, memory: MemorySampler, rate: float, duration: float,
              start: _Tally, log) -> tuple[float, float]:
    """Publish at `rate` for `duration` s from a thread while this one watches that the node stays
    alive and logs progress every 30 s; (start time, seconds it ran)."""
    stop = threading.Event()
    t0 = time.monotonic()
    publisher = threading.Thread(target=_publish_at, args=(client, rate, duration, stop), daemon=True)
    publisher.start()
    next_report = t0 + 30
    while publisher.is_alive():
        publisher.join(timeout=1.0)
        if not node.alive:
            stop.set()
            raise RuntimeError(f"the node died during the soak:\n{node.output()[-3000:]}")
        if time.monotonic() >= next_report:
            next_report += 30
            rss = memory.rss[-1][1] / 2**20 if memory.rss else float("nan")
            log(f"  {time.monotonic() - t0:5.0f} s: published {client.published - start.published}, "
                f"answered {len(client.latencies) - start.answered}, node RSS {rss:.1f} MiB")
    return t0, time.monotonic() - t0


def _traffic_report(client: SoakClient, start: _Tally, after: dict[str, int], t0: float,
                    elapsed: float) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """The frame accounting of the overload phase, and its answered frames as (seconds after t0, latency)."""
    counts = {k: after[k] - start.counters[k] for k in COUNTERS}
    published = client.published - start.published
    lat = [(t - t0, d) for t, d, _ in client.latencies[start.answered:]]
    traffic = dict(
        elapsed_s=round(elapsed, 1), published=published, **counts,
        lost_in_transport=published - counts["received"],
        input_rate_achieved_hz=round(published / elapsed, 2),
        processed_rate_hz=round(counts["processed"] / elapsed, 2),
        overload_ratio=round(published / max(counts["processed"], 1), 2),
        answered_frames=len(lat), incomplete_frames=client.incomplete,
    )
    return traffic, lat


def _memory_report(rss: list[tuple[float, int]], t0: float, warmup: float) -> dict[str, Any]:
    """The node's resident memory during the overload (MiB). Growth compares the mean of the last 10 s
    with the mean of the first 10 s after the warm-up, so start-up allocations do not count as a leak."""
    samples = [(t - t0, r) for t, r in rss if t >= t0]
    after_warm = [(t, r) for t, r in samples if t >= warmup]
    base = [r for t, r in after_warm if t < warmup + 10] or [r for _, r in after_warm[:1]]
    end = [r for t, r in after_warm if t >= after_warm[-1][0] - 10] if after_warm else []
    baseline = float(np.mean(base)) if base else float("nan")
    growth = 100.0 * (float(np.mean(end)) - baseline) / baseline if end else float("nan")
    peak = 100.0 * (max(r for _, r in after_warm) - baseline) / baseline if after_warm else float("nan")
    return {"before_soak": round(samples[0][1] / 2**20, 1) if samples else None,
            "after_warmup": round(baseline / 2**20, 1),
            "end": round(float(np.mean(end)) / 2**20, 1) if end else None,
            "max": round(max(r for _, r in samples) / 2**20, 1) if samples else None,
            "growth_pct": round(growth, 2), "peak_growth_pct": round(peak, 2),
            "samples": [[round(t, 1), round(r / 2**20, 1)] for t, r in samples[:: max(1, len(samples) // 60)]]}


def _latency_report(client: SoakClient, lat: list[tuple[float, float]], elapsed: float) -> dict[str, Any]:
    """End-to-end latency percentiles of the answered frames, overall and per third of the run (a
    trend shows up as rising thirds), and the node's own p99 from its diagnostics."""
    thirds = [[d for t, d in lat if k * elapsed / 3 <= t < (k + 1) * elapsed / 3] for k in range(3)]
    return dict(
        latency_ms=_percentiles([d for _, d in lat]),
        latency_p99_ms_by_third=[_percentiles(third).get("p99") for third in thirds],
        node_latency_p99_ms=float(client.status.get("latency p99 ms", "nan")) if client.status else None,
    )


def _shut_down(node: NodeProcess, client: SoakClient | None, memory: MemorySampler | None,
               report: dict[str, Any]) -> None:
    """Stop sampling, leave the graph, then stop the node (SIGINT first): its exit code and log tail go
    in the report, also when the soak failed."""
    if memory is not None:
        memory.stop()
    if client is not None:
        client.close()
    report["node_exit_code"] = node.stop(timeout=20.0)
    report["node_log_tail"] = node.output()[-1500:]
    node.close()


def _checks(report: dict[str, Any], max_growth: float, max_latency: float) -> dict[str, bool]:
    """The pass/fail checks of the module docstring, from a finished report."""
    return {
        "accounting": all_accounted(report) and report["invalid"] == report["errors"] == report["skipped"] == 0,
        "overloaded": report["dropped"] > 0,
        "memory": report["rss_mib"]["growth_pct"] < max_growth,
        "latency": report["latency_ms"].get("p99", float("inf")) < max_latency * 1e3,
        "clean_exit": report["node_exit_code"] == 0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m msseg_ros.tools.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of overload (default 600)")
    p.add_argument("--rate-factor", type=float, default=3.0, help="input rate / the node's rate (default 3)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--checkpoint", default="", help="model (default: the packaged CamVid model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"))
    p.add_argument("--threads", type=int, default=0, help="node inference threads (0 = every core)")
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--outputs", default=",".join(ALL_OUTPUTS), help="outputs subscribed (comma-separated)")
    p.add_argument("--reliability", choices=("best_effort", "reliable"), default="best_effort",
                   help="the camera publisher's QoS")
    p.add_argument("--warmup", type=float, default=None, help="seconds before memory is compared (default: "
                                                               "10%% of the duration, at least 5)")
    p.add_argument("--max-growth", type=float, default=5.0, help="allowed memory growth after warm-up, %%")
    p.add_argument("--max-latency", type=float, default=1.0, help="allowed latency p99, seconds")
    args = p.parse_args(argv)
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    unknown = sorted(set(outputs) - set(ALL_OUTPUTS))
    if unknown or not outputs:
        p.error(f"--outputs: unknown {unknown}; known: {', '.join(ALL_OUTPUTS)}")
    try:
        report = run_soak(args.duration, args.rate_factor, args.checkpoint, args.device, args.backend, args.threads,
                          args.width, args.height, outputs, args.reliability, args.warmup, args.max_growth,
                          args.max_latency)
    except (RuntimeError, TimeoutError) as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 1
    report["command"] = "python -m msseg_ros.tools.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(report, indent=2)
    if args.json:
        write_text_atomic(args.json, text + "\n")
    summary = {k: report[k] for k in ("published", "received", "processed", "dropped", "invalid", "errors",
                                      "skipped", "lost_in_transport", "input_rate_achieved_hz", "processed_rate_hz")}
    print(json.dumps(summary))
    print(f"memory: {report['rss_mib']['after_warmup']} -> {report['rss_mib']['end']} MiB "
          f"({report['rss_mib']['growth_pct']:+.2f}%), latency {report['latency_ms']}, checks {report['checks']}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
