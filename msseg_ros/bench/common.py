"""What the node benchmarks share: frame stamps, per-thread CPU of a process, the node's parameters from the
bench's options, a bare Segmenter phase, and spinning until a condition holds or the node died."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msseg_core.bench.options import split_list
from msseg_core.zoo import resolve_checkpoint

if TYPE_CHECKING:
    from msseg_ros.transport.graph import NodeProcess


STAMP_BASE = 1_000_000  # seconds; frame i has stamp (STAMP_BASE + i, 0)

NS = 1_000_000_000


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


def bare_phase(call, frames, seconds: float) -> tuple[int, float]:
    """Back-to-back calls for `seconds`: (calls, elapsed)."""
    n, t0 = 0, time.perf_counter()
    while True:
        call(frames[n % len(frames)])
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n, elapsed


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
