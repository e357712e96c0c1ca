"""What a camera's diagnostics status says, and the inference engine facts every status carries.

Levels, most urgent first (each status is judged on the moment it is published, 1 Hz):
- WARN, no input: no frame for `input_timeout` seconds, or none at all `startup_grace` seconds after
  activation (a camera that died, a wrong remap, a QoS mismatch);
- ERROR, nothing can be processed: the last FAILING_STREAK frames or more all failed (invalid or an
  error) and none was processed since, e.g. a camera sending an encoding the node cannot decode;
- the last problem since the previous status, as before: ERROR for an inference failure, WARN for
  anything else (an invalid frame, no road grid);
- OK otherwise, and again as soon as frames flow and are processed.
No rclpy in here: the node turns the levels into DiagnosticStatus bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from msseg_ros.node.pipeline import InputState

OK, WARN, ERROR = 0, 1, 2
FAILING_STREAK = 3
"""Failed frames in a row (with none processed) that make a camera's status ERROR."""
MESSAGE_LIMIT = 250


@dataclass(frozen=True)
class HealthLimits:
    input_timeout: float  # seconds without a frame before WARN; 0 = never
    startup_grace: float  # seconds after activation before a camera that sent nothing is WARN


def assess(state: InputState, problem: str, *, now: float, active_since: float, limits: HealthLimits,
           received: int, rate_hz: float) -> tuple[int, str]:
    """(level, message) of one camera's status; see the module docstring for the rules."""
    if limits.input_timeout > 0:
        if state.last_arrival is None:
            waited = now - active_since
            if waited > limits.startup_grace:
                return WARN, f"no frame received in the {waited:.0f} s since activation"
        elif now - state.last_arrival > limits.input_timeout:
            return WARN, (f"no frame for {now - state.last_arrival:.1f} s "
                          f"(input_timeout {limits.input_timeout:g} s)")
    if state.failing_streak >= FAILING_STREAK:
        message = (f"frames arrive but none can be processed: the last {state.failing_streak} failed "
                   f"(last: {state.last_failure})")
        return ERROR, message[:MESSAGE_LIMIT]
    if problem:
        return (ERROR if problem.startswith("inference") else WARN), problem[:MESSAGE_LIMIT]
    return OK, "segmenting" if rate_hz > 0 else ("waiting for frames" if received == 0 else "idle")


def engine_facts(describe: dict[str, Any]) -> dict[str, str]:
    """The diagnostics key-values of `Segmenter.describe()` beyond backend and precision: what
    backend 'auto' chose and why (timings, label agreement, cached), and the engine's own facts."""
    facts: dict[str, str] = {}
    auto = describe.get("auto") or {}
    if auto:
        facts["auto choice"] = str(auto.get("choice", ""))
        if auto.get("timings_ms"):
            facts["auto timings ms"] = ", ".join(f"{k} {float(v):.2f}" for k, v in auto["timings_ms"].items())
        if auto.get("agreement"):
            facts["auto agreement"] = ", ".join(f"{k} {float(v):.4f}" for k, v in auto["agreement"].items())
        if "cached" in auto:
            facts["auto cached"] = str(bool(auto["cached"])).lower()
        if auto.get("reason"):
            facts["auto reason"] = str(auto["reason"])
        if auto.get("skipped"):
            facts["auto skipped"] = ", ".join(sorted(auto["skipped"]))
    if int(describe.get("streams", 1)) > 1:
        facts["streams"] = str(describe["streams"])
    if "engine_cache" in describe:
        facts["engine cache"] = str(describe["engine_cache"])
    if "cuda_graphs" in describe:
        facts["cuda graphs"] = str(bool(describe["cuda_graphs"])).lower()
    if describe.get("providers"):
        facts["providers"] = ", ".join(describe["providers"])
    return facts


def frame_values(counts: dict[str, Any], latencies: np.ndarray, inference: np.ndarray, rate_hz: float
                 ) -> dict[str, str]:
    """The frame key-values of a status: counters, published outputs, latency, inference time, rate."""
    def ms(values: np.ndarray, q: float | None = None) -> str:
        if values.size == 0:
            return "nan"
        return f"{(np.percentile(values, q) if q is not None else values.mean()) * 1e3:.1f}"

    return {
        **{k: str(v) for k, v in counts.items() if k != "published"},
        **{f"published {k}": str(v) for k, v in counts["published"].items()},
        "latency mean ms": ms(latencies),
        "latency p99 ms": ms(latencies, 99),
        "inference mean ms": ms(inference),
        "output rate hz": f"{rate_hz:.2f}",
    }
