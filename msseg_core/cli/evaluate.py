"""msseg-eval: mIoU of a checkpoint on a dataset split, through the same `Segmenter` as the node.

    msseg-eval --checkpoint camvid --data-root ../shared/datasets/camvid --split val [--tta flip] [--json r.json]

Prints the per-class table; `--json` writes the report and a confusion-matrix picture beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from msseg_core.cli.common import add_segmenter_arguments, configure_process, segmenter_options
from msseg_core.evaluation.evaluate import evaluate_split, format_table, plot_confusion, report
from msseg_core.runtime.segmenter import Segmenter


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="a zoo model (camvid, camvid_fast), a .safetensors checkpoint or an .onnx export")
    p.add_argument("--data-root", required=True, help="dataset folder")
    p.add_argument("--split", required=True,
                   help="split expression: val, test, train+val, or one sequence such as train:0006R0 "
                        "(msseg_core.splits)")
    p.add_argument("--dataset", default=None, help="dataset loader (default: the checkpoint's dataset, else camvid)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--confusion-png", default=None,
                   help="confusion matrix picture (default: next to --json, <name>.confusion.png)")
    add_segmenter_arguments(p)
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    from msseg_core.data import build_dataset

    try:
        segmenter = Segmenter.from_checkpoint(args.checkpoint, **segmenter_options(args))
        dataset_name = args.dataset or segmenter.meta.dataset or "camvid"
        dataset = build_dataset(dataset_name, args.data_root, args.split)
        if len(dataset) == 0:
            raise ValueError(f"split {args.split!r} of {args.data_root} holds no images")
        cm = evaluate_split(segmenter, dataset, batch_size=args.batch_size,
                            progress=not args.quiet and sys.stderr.isatty())
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"msseg-eval: error: {exc}", file=sys.stderr)
        return 2
    names = segmenter.class_names
    print(format_table(cm, names))
    result = report(cm, names, str(args.checkpoint))
    if segmenter.meta.trained_on(args.split, dataset_name):
        result["split_in_training"] = True
        print(f"msseg-eval: note: {args.checkpoint} trained on {args.split!r} "
              f"(train_split {segmenter.meta.recipe['data']['train_split']!r}): this score is not held out",
              file=sys.stderr)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"report: {path}")
    png = args.confusion_png or (Path(args.json).with_suffix(".confusion.png") if args.json else None)
    if png:
        print(f"confusion matrix: {plot_confusion(cm, names, png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
