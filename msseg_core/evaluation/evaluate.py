"""The mIoU of a Segmenter on a dataset split, as msseg-eval, msseg-bag eval and training validation report it.

Every image is segmented at its full resolution (the Segmenter resizes to the network size and
returns logits at the image's size), so the numbers are those a user of the node would get.
Void pixels (255) never count. `evaluate_split` is the reusable part (the rosbag evaluator calls it;
training validation shares its `iter_logits`); `main` adds the table, the JSON report and the
confusion-matrix picture.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from msseg_core.evaluation.bootstrap import Estimate
from msseg_core.evaluation.metrics import ConfusionMatrix
from msseg_core.runtime.segmenter import Segmenter

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


def _predictions(segmenter: Segmenter, dataset, batch_size: int, indices: Sequence[int] | None,
                 progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(N x H x W predicted ids, N x H x W labels) batches, after checking the class sets match."""
    check_classes(segmenter, dataset)
    total = len(dataset) if indices is None else len(indices)
    from tqdm import tqdm

    with tqdm(total=total, unit="img", disable=not progress, leave=False) as bar:
        for logits, target in iter_logits(segmenter, dataset, indices, batch_size):
            yield logits.argmax(1), target
            bar.update(len(target))


def evaluate_split(segmenter: Segmenter, dataset, batch_size: int = 1, indices: Sequence[int] | None = None,
                   progress: bool = False) -> ConfusionMatrix:
    """Confusion matrix of `segmenter` over `dataset` (items: uint8 image, uint8 label with 255 = void)."""
    cm = ConfusionMatrix(segmenter.num_classes)
    for pred, target in _predictions(segmenter, dataset, batch_size, indices, progress):
        cm.update(pred, target)
    return cm


def confusions_per_image(segmenter: Segmenter, dataset, batch_size: int = 1,
                         progress: bool = False) -> np.ndarray:
    """N x C x C: one confusion matrix per image in the split's order, what a bootstrap resamples
    (msseg_core.evaluation.bootstrap); their sum is `evaluate_split`'s matrix."""
    mats = []
    for pred, target in _predictions(segmenter, dataset, batch_size, None, progress):
        for one_pred, one_target in zip(pred, target, strict=True):
            cm = ConfusionMatrix(segmenter.num_classes)
            cm.update(one_pred, one_target)
            mats.append(cm.mat)
    n = segmenter.num_classes
    return np.stack(mats) if mats else np.zeros((0, n, n), np.int64)


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


def format_difference(a: ConfusionMatrix, b: ConfusionMatrix, difference: Estimate, names: Sequence[str]) -> str:
    """Per class: A's IoU, B's, and A - B with its paired interval (percentage points)."""
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'A':>7}  {'B':>7}  A - B [interval]"]
    rows = zip(names, a.iou(), b.iou(), difference.per_class, strict=True)
    for name, ia, ib, d in [*rows, ("mean", a.miou, b.miou, difference.miou)]:
        diff = "n/a" if np.isnan(d.estimate) else f"{100 * d.estimate:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
        lines.append(f"{name:<{width}}  {_pct(ia)}  {_pct(ib)}  {diff}")
    lines.append(f"A ahead in {100 * difference.a_ahead:.1f}% of the resamples")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{'n/a':>7}" if np.isnan(value) else f"{100 * value:6.2f}%"


def plot_confusion(cm: ConfusionMatrix, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) as a PNG."""
    from msseg_core.io import new_figure, save_figure

    rows = cm.mat.sum(1, keepdims=True)
    norm = np.divide(cm.mat, np.maximum(rows, 1), dtype=np.float64)
    n = len(class_names)
    size = 2.5 + 0.55 * n
    fig = new_figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
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
