"""msseg-export: a checkpoint as a self-describing ONNX or TorchScript file, checked against PyTorch.

    msseg-export --checkpoint camvid --out camvid.onnx [--fp16] [--height H --width W]

The export runs the same inputs as PyTorch before it is reported done; the exit status is non-zero when
the logits or labels differ beyond tolerance (the contract of the file: msseg_core.runtime.artifacts).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from msseg_core.checkpoint import CheckpointError, load_checkpoint
from msseg_core.cli.common import configure_process
from msseg_core.runtime.artifacts import check_onnx, check_torchscript, export_onnx, export_torchscript
from msseg_core.zoo import resolve_checkpoint


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msseg-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="", help="msseg .safetensors checkpoint ('' = the packaged default)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True, help="output file (.onnx / .pt)")
    p.add_argument("--height", type=positive_int, help="network input height (default: the checkpoint's)")
    p.add_argument("--width", type=positive_int, help="network input width (default: the checkpoint's)")
    p.add_argument("--fp16", action="store_true", help="float16 weights, input and output")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="ONNX exporter: torch.export-based (falls back to legacy on failure) or legacy TorchScript")
    p.add_argument("--rtol", type=float, default=None,
                   help="max |logit diff| allowed, relative to max |logit| (default 1e-3, fp16 5e-2)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="minimum argmax label agreement, 0..1 (default 0.99, fp16 0.95)")
    p.add_argument("--no-check", action="store_true", help="skip the numerical check")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify, print the check; exit 0 only if the export is within tolerance."""
    args = build_parser().parse_args(argv)
    configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        model, meta = load_checkpoint(ckpt, device="cpu")
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"msseg-export: {exc}", file=sys.stderr)
        return 2
    h = args.height or meta.input_size[0]
    w = args.width or meta.input_size[1]
    try:
        if args.format == "onnx":
            out = export_onnx(model, meta, args.out, (h, w), opset=args.opset, fp16=args.fp16,
                              dynamic=args.dynamic, exporter=args.exporter)
        else:
            if args.dynamic or args.opset:
                print("msseg-export: --dynamic/--opset apply to ONNX only; ignored", file=sys.stderr)
            out = export_torchscript(model, meta, args.out, (h, w), fp16=args.fp16)
    except Exception as exc:  # noqa: BLE001 - report the exporter's failure as a CLI error
        print(f"msseg-export: export failed: {exc}", file=sys.stderr)
        return 1
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({args.format}, {meta.model}, input 1x3x{h}x{w}{' fp16' if args.fp16 else ''}, "
          f"{size_mb:.1f} MB)")
    if args.no_check:
        return 0
    check_fn = check_onnx if args.format == "onnx" else check_torchscript
    result = check_fn(out, model, meta, rel_tol=args.rtol, min_agreement=args.min_agreement)
    print(f"check against PyTorch fp32: {result}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
