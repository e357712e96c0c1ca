"""msseg-eval: mIoU of a checkpoint on a dataset split, through the same `Segmenter` as the node.

Every image is segmented at its full resolution (the Segmenter resizes to the network size and
returns logits at the image's size), so the numbers are those a user of the node would get.
Void pixels (255) never count. `evaluate_split` is the reusable part (the rosbag evaluator calls it;
training validation shares its `iter_logits`); `main` adds the table, the JSON report and the
confusion-matrix picture.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from msseg_core.inference import BACKENDS, PRECISIONS, Segmenter
from msseg_core.metrics import ConfusionMatrix

REPORT_KEYS = ("miou", "mean_acc", "pixel_acc", "per_class_iou", "per_class_acc", "confusion_matrix",
               "num_images", "checkpoint")


def check_classes(segmenter: Segmenter, dataset) -> None:
    """Refuse to score a model against labels whose ids mean something else."""
    classes = getattr(dataset, "classes", None)  # a ClassSet; `dataset.names` are the sample names
    names = list(classes.names) if classes is not None else segmenter.class_names
    if names != segmenter.class_names:
        raise ValueError(f"the checkpoint's classes {segmenter.class_names} differ from the dataset's {names}")


def iter_logits(segmenter: Segmenter, dataset, indices: Sequence[int] | None = None,
                batch_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (N x C x H x W float logits, N x H x W long labels) on the segmenter's device.

    Consecutive images of the same size share a forward pass (up to `batch_size`); each keeps its
    own full resolution.
    """
    indices = range(len(dataset)) if indices is None else indices
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []

    def flush() -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.from_numpy(np.stack(images)).to(segmenter.device)
        target = torch.from_numpy(np.stack(masks)).to(segmenter.device).long()
        images.clear()
        masks.clear()
        return segmenter.logits_from_tensor(batch), target

    for i in indices:
        image, mask = dataset[i]
        image, mask = np.asarray(image), np.asarray(mask)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"item {i}: expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"item {i}: label {mask.shape} does not match image {image.shape[:2]}")
        if images and (image.shape != images[0].shape or len(images) >= batch_size):
            yield flush()
        images.append(image)
        masks.append(mask)
    if images:
        yield flush()


def evaluate_split(segmenter: Segmenter, dataset, batch_size: int = 1, indices: Sequence[int] | None = None,
                   progress: bool = False) -> ConfusionMatrix:
    """Confusion matrix of `segmenter` over `dataset` (items: uint8 image, uint8 label with 255 = void)."""
    check_classes(segmenter, dataset)
    cm = ConfusionMatrix(segmenter.num_classes)
    total = len(dataset) if indices is None else len(indices)
    from tqdm import tqdm

    with tqdm(total=total, unit="img", disable=not progress, leave=False) as bar:
        for logits, target in iter_logits(segmenter, dataset, indices, batch_size):
            cm.update(logits.argmax(1), target)
            bar.update(len(target))
    return cm


def format_table(cm: ConfusionMatrix, class_names: Sequence[str]) -> str:
    """Per-class IoU and accuracy, then the means, as fixed-width text."""
    width = max(12, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}"]
    for name, iou, acc in zip(class_names, cm.iou(), cm.class_accuracy(), strict=True):
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    lines.append(f"{'mean':<{width}}  {_pct(cm.miou)}  {_pct(cm.mean_accuracy)}")
    lines.append(f"{'pixel acc':<{width}}  {'':>7}  {_pct(cm.pixel_accuracy)}")
    lines.append(f"{cm.num_images} images")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{'n/a':>7}" if np.isnan(value) else f"{100 * value:6.2f}%"


def plot_confusion(cm: ConfusionMatrix, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msseg_core.io import save_figure

    rows = cm.mat.sum(1, keepdims=True)
    norm = np.divide(cm.mat, np.maximum(rows, 1), dtype=np.float64)
    n = len(class_names)
    size = 2.5 + 0.55 * n
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for r in range(n):
            for c in range(n):
                if norm[r, c] >= 0.005:
                    ax.text(c, r, f"{norm[r, c]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[r, c] > 0.5 else "black")
    ax.set_title(title or f"confusion (row-normalised), mIoU {100 * cm.miou:.1f}%")
    return save_figure(fig, path)


def report(cm: ConfusionMatrix, class_names: Sequence[str], checkpoint: str) -> dict:
    """The JSON report: exactly REPORT_KEYS."""
    out = cm.to_dict(list(class_names))
    out["checkpoint"] = checkpoint
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="a zoo model (camvid, camvid_fast), a .safetensors checkpoint or an .onnx export")
    p.add_argument("--data-root", required=True, help="dataset folder")
    p.add_argument("--split", required=True, help="split name, e.g. val or test")
    p.add_argument("--dataset", default=None, help="dataset loader (default: the checkpoint's dataset, else camvid)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--confusion-png", default=None,
                   help="confusion matrix picture (default: next to --json, <name>.confusion.png)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend (as the node's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the usable cores)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from msseg_core.data import build_dataset

    try:
        segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                              backend=args.backend, threads=args.threads)
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
