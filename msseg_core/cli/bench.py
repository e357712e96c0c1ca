"""msseg-bench: honest speed figures for the networks, the Segmenter and the ROS node.

    msseg-bench model      [--models a,b] [--sizes 360x480,512x768,720x960] [--precision fp32,fp16]
                           [--modes eager,compiled] [--batch 1,8] [--device auto] [--iters N] [--warmup N]
                           [--max-seconds S] [--json OUT] [--md OUT]
    msseg-bench segmenter  [--checkpoint C | --model NAME] [--sizes 360x480,720x960]
                           [--backends naive,torch,onnxruntime,openvino] [--precision fp32,int8]
                           [--upsample boundary,exact] [--tta none,flip] [--outputs ...] [--json OUT] [--md OUT]
    msseg-bench pareto     --data-root D [--checkpoints camvid,camvid_fast] [--chart PNG]
                           (mIoU against frames/s per model x engine x precision: msseg_core.bench.pareto)
    msseg-bench node       [--checkpoint C] [--sizes 360x480,720x960] [--frames N]
                           (msseg_ros.bench.node: the console script hands `node` there; needs rclpy)

How the figures are taken: every configuration gets `--warmup` untimed calls (cuDNN autotuning,
lazy initialisation, compilation), then up to `--iters` timed calls, each ending with a CUDA
synchronisation so a latency is the real wall time of one call; a configuration stops early after
`--max-seconds` (at least 3 timed calls), and the JSON says how many calls were timed. Latency
percentiles are over single calls; FPS = 1 / mean latency at batch 1; throughput = batch / mean
latency (images/s) at batch > 1. Random weights at each model's default configuration: speed does
not depend on the values. GFLOPs are forward FLOPs (2 per multiply-add, `models.stats.gflops`) at
360x480, batch 1.

Sizes are HEIGHTxWIDTH everywhere (--sizes 1080x1920 is a 1920 x 1080 camera frame).

Modes (`model`): naive (fp32 NCHW eager, nothing else: the baseline), eager (BatchNorm folded,
channels_last, autocast: Segmenter's PyTorch backend), compiled (eager + torch.compile),
cuda_graphs (eager + CUDA graph replay; CUDA only), onnxruntime, openvino, tensorrt (the ONNX
export in that engine; precision int8 runs a QDQ file calibrated on synthetic frames: its speed is
real, its accuracy meaningless). Backends (`segmenter`): naive (the original Segmenter: fp32 eager
model, float resize, argmax, softmax; the reference that speed-ups are measured
against), torch, onnxruntime, openvino, tensorrt, auto (what `Segmenter` picks by default); each
with every `--precision` it runs (int8: the checkpoint's INT8 file from msseg-quantize, or for
random weights a speed-only one), `--upsample` mode and `--tta`. Every row states the threads its engine
ran with (`--threads`, the same for PyTorch and the engines).

JSON: {"kind", "env": {torch, onnxruntime, device, device_name, cpu, threads, ...}, "args",
"results": [...]}; `model` rows: model, params, gflops_360x480, size [h, w], precision, mode, batch,
iters, first_call_ms, latency_ms {p50, p99, mean, min}, fps (batch 1) or throughput_ips (batch > 1),
error (only when the configuration failed or was skipped). `segmenter` rows: backend, frame_size,
input_size, outputs, upsample, tta, iters, first_call_ms, latency_ms (end to end: `segment`), network_ms
and postprocess_ms (the two stages timed apart: `run_network`, then `postprocess` of held results; not for
naive), fps, speedup_vs_naive (ratio of p50s), labels_agreement_vs_first (fraction of pixels equal to the
first row's, naive by default), describe.
`node` rows: frame_size, frames, node_latency_ms, bare_latency_ms, overhead_ms, overhead_ratio.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from msseg_core.bench.models import MODEL_MODES, bench_models
from msseg_core.bench.options import add_common_arguments
from msseg_core.bench.report import report_paths, save_report
from msseg_core.bench.segmenter import SEGMENTER_BACKENDS, bench_segmenter
from msseg_core.cli.common import configure_process
from msseg_core.runtime.segmenter import OUTPUTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msseg-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", help="network forward latency / throughput per model, size, precision, mode",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--models", default="", help="comma-separated registered names (default: all)")
    m.add_argument("--model-args", default="",
                   help='JSON builder kwargs, for all models ({"width": 0.25}) or per model ({"mssanet": {...}})')
    m.add_argument("--sizes", default="360x480,512x768,720x960", help="network input sizes HxW")
    m.add_argument("--precision", default="fp32,fp16", help="fp32, fp16 (CUDA only), bf16, int8")
    m.add_argument("--modes", default="eager,compiled", help=", ".join(MODEL_MODES))
    # (--precision int8: onnxruntime/openvino/tensorrt modes, a speed-only QDQ file)
    m.add_argument("--batch", default="1,8", help="batch sizes (1: latency and FPS; >1: throughput)")
    add_common_arguments(m, iters=50, warmup=10, max_seconds=30.0)

    s = sub.add_parser("segmenter", help="Segmenter end to end (uint8 frame in, uint8 outputs out) per backend",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--checkpoint", default="", help="checkpoint (default: packaged model, else --model)")
    s.add_argument("--model", default="", help="registered model with random weights instead of a checkpoint")
    s.add_argument("--model-args", default="", help="JSON builder kwargs for --model")
    s.add_argument("--input-size", default="", help="network input HxW (default: the checkpoint's)")
    s.add_argument("--sizes", default="360x480,720x960", help="frame sizes HxW")
    s.add_argument("--backends", default="naive,torch,onnxruntime", help=", ".join(SEGMENTER_BACKENDS))
    s.add_argument("--outputs", default=",".join(OUTPUTS), help="outputs requested per frame")
    s.add_argument("--frames", type=int, default=8, help="distinct synthetic frames, cycled")
    s.add_argument("--precision", default="fp32", help="Segmenter precisions, e.g. fp32,int8 (naive: fp32 only)")
    s.add_argument("--compile", action="store_true", help="Segmenter option compile (PyTorch backend)")
    s.add_argument("--cuda-graphs", action="store_true", help="Segmenter option cuda_graphs (CUDA only)")
    s.add_argument("--upsample", default="boundary", help="Segmenter upsample modes, e.g. boundary,exact")
    s.add_argument("--tta", default="none", help="Segmenter test-time augmentation, e.g. none,flip")
    add_common_arguments(s, iters=30, warmup=3, max_seconds=60.0)

    c = sub.add_parser("pareto", help="mIoU against frames/s for every model x engine x precision, one chart",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_pareto_arguments(c)
    add_common_arguments(c, iters=30, warmup=3, max_seconds=20.0)

    return p


def add_pareto_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", default="camvid,camvid_fast",
                   help="zoo names or .safetensors; the first is the node's default model")
    p.add_argument("--data-root", default=None, help="dataset folder (required unless --from-json)")
    p.add_argument("--split", default="val", help="split to score and time on")
    p.add_argument("--configs", default="", help="backend:precision list (default: every one this device runs)")
    p.add_argument("--chart", default=None, help="write the chart (PNG) here")
    p.add_argument("--title", default="", help="chart title (default: machine and threads)")
    p.add_argument("--agreement-frames", type=int, default=20, help="frames for the label agreement check")
    p.add_argument("--from-json", default="", help="measure nothing: chart and tabulate these saved reports "
                   "(comma-separated pareto.json files, merged in order; no node-default star)")
    p.add_argument("--rename", action="append", default=[], metavar="CHECKPOINT=NAME",
                   help="with --from-json: show CHECKPOINT as NAME in the chart and table (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.command == "pareto":
        from msseg_core.bench.pareto import run as bench_pareto

        report = bench_pareto(args)
    else:
        report = bench_models(args) if args.command == "model" else bench_segmenter(args)
    print(save_report(report, *report_paths(report["kind"], args.json, args.md, args.out)), end="")
    failed = [r for r in report["results"] if "error" in r and not str(r["error"]).startswith("skipped")]
    return 1 if failed and len(failed) == len(report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
