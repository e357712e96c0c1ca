"""The `msseg-bench` console script: `node` (the ROS node benchmarks, msseg_ros.bench.node and .cameras) here,
every other subcommand (model, segmenter, pareto) in msseg_core.cli.bench, so msseg_core never imports ROS."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from msseg_core.bench.options import add_common_arguments
from msseg_core.bench.report import report_paths, save_report
from msseg_core.bench.timing import environment
from msseg_core.cli import bench as core_bench
from msseg_core.cli.common import configure_process
from msseg_core.runtime.engines.torch_ort import default_threads
from msseg_core.runtime.segmenter import resolve_device


def build_parser() -> argparse.ArgumentParser:
    """`msseg-bench node`'s options."""
    n = argparse.ArgumentParser(prog="msseg-bench node",
                                description="the segmentation node over DDS versus the bare Segmenter",
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
                      help="rows: labels (vs Segmenter.predict), all five outputs (vs Segmenter.segment), or "
                           "outputs joined with '+', e.g. labels+road_mask (vs segment of those)")
    rate.add_argument("--phase-seconds", type=float, default=5.0, help="length of each bare / node phase")
    rate.add_argument("--rounds", type=int, default=3, help="bare / bare pipelined / node phases per row")
    rate.add_argument("--feed-hz", type=float, default=0.0,
                      help="feed the node at this rate (a camera's, e.g. 30) instead of --feed-factor x the bare rate")
    rate.add_argument("--feed-factor", type=float, default=1.25,
                      help="frames published per frame of the faster bare rate")
    cams = n.add_argument_group("cameras (instead of lockstep and rate)")
    cams.add_argument("--cameras", default="", help="e.g. 1,2,4: one node with N cameras against N single-camera "
                                                    "nodes (aggregate frames/s and RSS), for each N")
    waits = n.add_argument_group("waits")
    waits.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one frame's outputs")
    waits.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the node to come up")
    add_common_arguments(n, iters=30, warmup=3, max_seconds=600.0)
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `msseg-bench`: `node` here, every other subcommand in msseg_core.cli.bench."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "node":
        return core_bench.main(argv)
    args = build_parser().parse_args(argv[1:])
    args.command = "node"
    configure_process(args.threads, args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        import rclpy  # noqa: F401
    except ImportError as exc:
        print(f"msseg-bench node needs ROS 2 (rclpy): {exc}", file=sys.stderr)
        return 2
    if args.cameras:
        from msseg_ros.bench.cameras import cameras_markdown, run_cameras

        report = run_cameras(args)
    else:
        from msseg_ros.bench.node import run

        report = run(args)
    report["env"] = environment(resolve_device(args.device), args.threads or default_threads())
    report["args"] = vars(args)
    kind = "node_cameras" if args.cameras else "node"
    markdown = cameras_markdown(report) if args.cameras else None
    print(save_report(report, *report_paths(kind, args.json, args.md, args.out), markdown=markdown), end="")
    failed = [r for r in report["results"] if "error" in r]
    return 1 if failed and len(failed) == len(report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
