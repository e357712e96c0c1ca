"""msseg-quantize: a checkpoint's INT8 model, one QDQ ONNX file calibrated once on training frames.

    msseg-quantize --checkpoint camvid --data-root ../shared/datasets/camvid --split train --frames 300 \\
        --eval-split val

The file lands beside the checkpoint (`camvid.int8.onnx`), where `precision: int8` finds it; why QDQ, which
quantiser and which layers stay fp32: msseg_core.deploy.int8. `--eval-split` scores fp32 and INT8 on that
split; the exit status is 1 when INT8 loses more than `--max-drop` mIoU points.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from msseg_core.checkpoint import CheckpointError
from msseg_core.cli.common import configure_process
from msseg_core.deploy.int8 import DEFAULT_FRAMES, METHODS, compare_on_split, format_comparison, quantize_checkpoint
from msseg_core.runtime.artifacts import SUFFIXES, int8_props


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msseg-quantize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="", help="zoo name or .safetensors ('' = the default zoo model)")
    p.add_argument("--data-root", required=True, help="dataset folder (calibration and --eval-split)")
    p.add_argument("--split", default="train", help="calibration split")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="calibration frames, spread over the split")
    p.add_argument("--dataset", default=None, help="dataset loader (default: the checkpoint's, else camvid)")
    p.add_argument("--for", dest="target", choices=tuple(SUFFIXES), default="cpu",
                   help="cpu: ONNX Runtime and OpenVINO; tensorrt: symmetric activations, <name>.int8-tensorrt.onnx")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint, <name>.int8.onnx)")
    p.add_argument("--method", choices=METHODS, default="onnxruntime", help="quantiser")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="REGEX",
                   help="ONNX node names to leave in fp32 (repeatable)")
    p.add_argument("--height", type=int, default=None, help="network input height (default: the checkpoint's)")
    p.add_argument("--width", type=int, default=None, help="network input width (default: the checkpoint's)")
    p.add_argument("--eval-split", default=None, help="then score fp32 and INT8 on this split (e.g. val)")
    p.add_argument("--max-drop", type=float, default=1.0, help="mIoU points INT8 may lose (with --eval-split)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the evaluation")
    p.add_argument("--json", default=None, help="write the evaluation report here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.frames < 1:
        print("msseg-quantize: --frames must be >= 1", file=sys.stderr)
        return 2
    size = (args.height, args.width) if args.height and args.width else None
    try:
        out = quantize_checkpoint(args.checkpoint, args.data_root, args.split, args.frames, args.out, args.method,
                                  args.keep_fp32, args.dataset, size, args.target)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"msseg-quantize: {exc}", file=sys.stderr)
        return 2
    calib = json.loads(int8_props(out)["calibration"])
    print(f"wrote {out} ({calib['method']}, {calib['frames']} frames of {calib['split']}; fp32 nodes: "
          f"{calib['fp32_nodes'] or 'none'})")
    if not args.eval_split or args.target != "cpu":
        return 0  # (a TensorRT file is judged on the GPU: msseg-eval --device cuda --precision int8)
    from msseg_core.runtime.engines.factory import engine_versions

    engines = [e for e in ("onnxruntime", "openvino") if engine_versions()[e]]
    rows = compare_on_split(args.checkpoint, out, args.data_root, args.eval_split, engines, args.threads,
                            args.dataset, size)
    print(format_comparison(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"int8_model": str(out), "calibration": calib, "results": rows},
                                              indent=2) + "\n")
    fp32 = rows["onnxruntime fp32"]["miou"]
    change = {k.split()[0]: 100 * (v["miou"] - fp32) for k, v in rows.items() if k.endswith("int8")}
    ok = all(c >= -args.max_drop for c in change.values())
    print(f"mIoU change INT8 - fp32 on {args.eval_split}: "
          f"{', '.join(f'{k} {c:+.2f}' for k, c in change.items())} points (allowed loss {args.max_drop}): "
          f"{'OK' if ok else 'FAILED (keep the layers that lose most in fp32: --keep-fp32)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
