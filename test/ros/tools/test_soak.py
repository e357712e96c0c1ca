"""Overload, short: the real node (a subprocess) fed at four times the rate it answers in lock-step, for 20 s.

What is asserted is behaviour: the excess is dropped and counted, every frame is accounted for exactly,
memory stays within a generous bound, the node exits cleanly. No latency or rate threshold: a loaded CI
machine would fail one without a bug; the figures come from the long version, a command (RELIABILITY.md):
    python -m msseg_ros.tools.soak --duration 600 --rate-factor 3 --json out.json
"""

from __future__ import annotations

import json

import pytest
from helpers_ros import FAST_PARAMS

from msseg_ros.tools.soak import main, run_soak

pytestmark = pytest.mark.ros
MAX_GROWTH_PCT = 20.0  # resident memory after the warm-up; a leak of one frame per frame would pass 100 %


@pytest.mark.slow
def test_overload_drops_and_counts_the_excess_with_flat_memory(tiny_checkpoint) -> None:  # noqa: F811
    report = run_soak(duration=20, rate_factor=4, checkpoint=str(tiny_checkpoint), width=160, height=120,
                      warmup=6, max_growth=MAX_GROWTH_PCT, max_latency=float("inf"), calibration_frames=10,
                      calibration_s=3.0, **FAST_PARAMS)
    summary = {k: v for k, v in report.items() if k not in ("node_log_tail", "rss_mib")}
    print("\nsoak:", json.dumps(summary), "memory MiB:", {k: v for k, v in report["rss_mib"].items() if k != "samples"})
    # Really overloaded: far more frames in than out, the excess dropped by the node (newest frame wins).
    # Lock-step calibration underestimates what the node sustains when it never waits for a round trip
    # (1.5x on CI), so the margin is in the rate factor and the bound is on the drops themselves.
    assert report["processed_rate_hz"] > 0 and report["dropped"] >= 0.4 * report["received"], summary
    # Every received frame accounted for, exactly; nothing invalid, failed or skipped.
    assert report["received"] == report["processed"] + report["dropped"], summary
    assert report["invalid"] == report["errors"] == report["skipped"] == 0, summary
    # What DDS loses before the node takes a frame (best effort, flooded at 4x) depends on the machine and the
    # middleware, not on the node: it is reported (lost_in_transport), never bounded here.
    assert report["received"] <= report["published"], summary
    assert report["lost_in_transport"] == report["published"] - report["received"], summary
    # Processed frames come back on every output (the outputs keep the last 2 for a slow subscriber, so
    # a client starved of CPU may miss a few), the whole run long.
    assert report["answered_frames"] >= 0.99 * report["processed"], summary
    # Resident memory within the bound after the warm-up; a clean exit.
    assert report["rss_mib"]["growth_pct"] < MAX_GROWTH_PCT, report["rss_mib"]
    assert report["node_exit_code"] == 0, report["node_log_tail"]
    assert report["ok"] and all(report["checks"].values()), report["checks"]


def test_soak_command_rejects_unknown_outputs(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--duration", "1", "--outputs", "labels,depth"])
    assert info.value.code == 2 and "unknown ['depth']" in capsys.readouterr().err
