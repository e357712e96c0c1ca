"""How one configuration is timed: warm-up calls, then timed calls (each synchronised on CUDA) until a count or a
time budget, latency statistics, and the machine the figures came from."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import torch

from msseg_core.runtime.engines.torch_ort import cpu_flags, cpu_name


def device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(fn: Callable[[], object], warmup: int, iters: int, max_seconds: float,
               sync: Callable[[], None] = lambda: None, min_iters: int = 3) -> dict:
    """Warm up, then time single calls (synchronised) until `iters` or the time budget is reached."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
        sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if len(times) >= min_iters and time.perf_counter() - start > max_seconds:
            break
    return {"iters": len(times), "first_call_ms": round(first * 1e3, 3), **latency_stats(times)}


def latency_stats(times_s: Sequence[float]) -> dict:
    """p50 / p99 / mean / min of call durations, in milliseconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {"latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3),
                           "p99": round(float(np.percentile(ms, 99)), 3),
                           "mean": round(float(ms.mean()), 3), "min": round(float(ms.min()), 3)}}


def environment(device: torch.device, threads: int) -> dict:
    """What the figures were taken on: versions, device, CPU and its ISA flags, threads, load (noisy machines show)."""
    env = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device), "threads": threads,
           "cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu_count": os.cpu_count()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        env["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return env
