"""Confusion matrix and the metrics derived from it (torchvision references' bincount recipe)."""

from __future__ import annotations

import math

import numpy as np
import torch

from msseg_core.classes import IGNORE_INDEX


def json_number(x: float) -> float | None:
    """A metric for a JSON report: NaN (a class that never occurs) becomes null, so the JSON stays valid."""
    return None if math.isnan(x) else float(x)


def iou_of(mat: np.ndarray) -> np.ndarray:
    """Per-class IoU of a confusion matrix, or of each in a stack (... x C x C -> ... x C); NaN for a class
    neither present nor predicted."""
    tp = np.diagonal(mat, axis1=-2, axis2=-1).astype(np.float64)
    union = mat.sum(-2) + mat.sum(-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_over_present(values: np.ndarray) -> np.ndarray:
    """The mean over the last axis of the classes that are not NaN (0 when none is): mIoU's mean."""
    present = ~np.isnan(values)
    total = np.where(present, values, 0.0).sum(-1)
    return np.where(present.any(-1), total / np.maximum(present.sum(-1), 1), 0.0)


class ConfusionMatrix:
    """Rows are ground truth, columns prediction; pixels labelled `ignore_index` never count."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.num_images = 0

    @classmethod
    def of(cls, mats: np.ndarray) -> ConfusionMatrix:
        """The matrix of a whole split from its per-image matrices (N x C x C)."""
        cm = cls(mats.shape[-1])
        cm.mat += mats.sum(0).astype(np.int64)
        cm.num_images = len(mats)
        return cm

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add one image (or a batch) of predicted and true class ids of the same shape."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        n = self.num_classes
        images = 1 if pred.ndim <= 2 else int(pred.shape[0])
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            p = torch.as_tensor(pred).reshape(-1).long()
            t = torch.as_tensor(target, device=p.device).reshape(-1).long()
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
                raise ValueError(f"label values outside 0..{n - 1} (and {self.ignore_index} = ignore)")
            if p.numel() and (int(p.min()) < 0 or int(p.max()) >= n):
                raise ValueError(f"predicted class ids outside 0..{n - 1}")
            counts = torch.bincount(t * n + p, minlength=n * n).cpu().numpy()
        else:
            p = np.asarray(pred).reshape(-1).astype(np.int64)
            t = np.asarray(target).reshape(-1).astype(np.int64)
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
            if t.size and (t.min() < 0 or t.max() >= n):
                raise ValueError(f"label values outside 0..{n - 1} (and {self.ignore_index} = ignore)")
            if p.size and (p.min() < 0 or p.max() >= n):
                raise ValueError(f"predicted class ids outside 0..{n - 1}")
            counts = np.bincount(t * n + p, minlength=n * n)
        self.mat += counts.reshape(n, n)
        self.num_images += images

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix (e.g. from another rank or process)."""
        self.mat += other.mat
        self.num_images += other.num_images

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class neither present nor predicted."""
        return iou_of(self.mat)

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (fraction of each class's pixels labelled right); NaN if absent."""
        tp = np.diag(self.mat).astype(np.float64)
        total = self.mat.sum(1)
        return np.where(total > 0, tp / np.maximum(total, 1), np.nan)

    @property
    def miou(self) -> float:
        return float(mean_over_present(self.iou()))

    @property
    def mean_accuracy(self) -> float:
        return float(mean_over_present(self.class_accuracy()))

    @property
    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else 0.0

    def to_dict(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """The report schema shared by msseg-eval, msseg-bag eval and the live evaluator.

        Classes that never occur (NaN) are reported as null so the JSON stays valid.
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")

        return {
            "miou": self.miou,
            "mean_acc": self.mean_accuracy,
            "pixel_acc": self.pixel_accuracy,
            "per_class_iou": {c: json_number(v) for c, v in zip(class_names, self.iou(), strict=True)},
            "per_class_acc": {c: json_number(v) for c, v in zip(class_names, self.class_accuracy(), strict=True)},
            "confusion_matrix": self.mat.tolist(),
            "num_images": self.num_images,
        }
