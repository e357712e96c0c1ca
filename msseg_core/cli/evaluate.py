"""msseg-eval: mIoU of a checkpoint on a dataset split, through the same `Segmenter` as the node.

    msseg-eval --checkpoint camvid --data-root ../shared/datasets/camvid --split val [--tta flip] [--json r.json]
    msseg-eval --checkpoint runs/a/last.safetensors --against runs/b/last.safetensors --split train:0006R0 ...

Prints the per-class table; `--json` writes the report and a confusion-matrix picture beside it.
`--bootstrap N` adds intervals (a block bootstrap over the frames, msseg_core.evaluation.bootstrap);
`--against` scores a second model on the same frames and reports the difference with a paired interval,
which is how to tell a recipe change from the luck of which frames were labelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from msseg_core.cli.common import add_segmenter_arguments, configure_process, segmenter_options
from msseg_core.evaluation.bootstrap import BootstrapSettings, Interval, paired_difference, score_interval
from msseg_core.evaluation.evaluate import confusions_per_image, format_difference, format_table, plot_confusion, report
from msseg_core.evaluation.metrics import ConfusionMatrix
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
    p.add_argument("--against", default=None, metavar="CHECKPOINT",
                   help="a second model, scored on the same frames with the same options: report A - B")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="resamples for 95%% intervals (default: none; 1000 with --against)")
    p.add_argument("--block", type=int, default=10, metavar="FRAMES",
                   help="consecutive frames resampled together, since neighbouring frames are alike (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.bootstrap is None:
        args.bootstrap = 1000 if args.against else 0
    if args.bootstrap == 1 or args.bootstrap < 0 or args.block < 1:
        p.error("--bootstrap must be 0 (off) or >= 2, and --block >= 1")
    if args.against and not args.bootstrap:
        p.error("--against compares with a paired bootstrap: give --bootstrap N >= 2 (or leave it out: 1000)")
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
        progress = not args.quiet and sys.stderr.isatty()
        mats = confusions_per_image(segmenter, dataset, batch_size=args.batch_size, progress=progress)
        other = Segmenter.from_checkpoint(args.against, **segmenter_options(args)) if args.against else None
        other_mats = (confusions_per_image(other, dataset, batch_size=args.batch_size, progress=progress)
                      if other else None)
        settings = BootstrapSettings(samples=args.bootstrap, block=args.block) if args.bootstrap else None
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"msseg-eval: error: {exc}", file=sys.stderr)
        return 2
    names = segmenter.class_names
    cm = ConfusionMatrix.of(mats)
    print(format_table(cm, names))
    result = report(cm, names, str(args.checkpoint))
    _flag_training_split(segmenter, args.checkpoint, result, args.split, dataset_name)
    if settings:
        estimate = score_interval(mats, settings)
        result["bootstrap"] = estimate.to_dict(names, settings)
        print(f"mIoU {_range(estimate.miou)} ({100 * settings.level:.0f}% interval: {settings.samples} resamples "
              f"of runs of {settings.block} frames)")
    if other_mats is not None:
        other_cm = ConfusionMatrix.of(other_mats)
        difference = paired_difference(mats, other_mats, settings)
        result["against"] = report(other_cm, names, str(args.against))
        _flag_training_split(other, args.against, result["against"], args.split, dataset_name)
        result["difference"] = difference.to_dict(names, settings)
        print(format_difference(cm, other_cm, difference, names))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"report: {path}")
    png = args.confusion_png or (Path(args.json).with_suffix(".confusion.png") if args.json else None)
    if png:
        print(f"confusion matrix: {plot_confusion(cm, names, png)}")
    return 0


def _flag_training_split(model: Segmenter, checkpoint: str, result: dict, split: str, dataset: str) -> None:
    """Say (stderr and JSON) when a model trained on frames of the split it is scored on."""
    if model.meta.trained_on(split, dataset):
        result["split_in_training"] = True
        print(f"msseg-eval: note: {checkpoint} trained on {split!r} "
              f"(train_split {model.meta.recipe['data']['train_split']!r}): this score is not held out",
              file=sys.stderr)


def _range(i: Interval) -> str:
    return f"{100 * i.estimate:.2f} [{100 * i.low:.2f}, {100 * i.high:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
