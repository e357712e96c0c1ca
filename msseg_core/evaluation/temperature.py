"""Temperature scaling, so that `confidence` means probability (Guo et al. 2017; msseg-calibrate).

Planners threshold the confidence image (e.g. a costmap layer that trusts road pixels above 0.8), so
0.8 should be right 80% of the time. Networks trained with cross-entropy are over-confident; one
scalar T, fitted on held-out data by minimising the negative log-likelihood of softmax(logits / T),
fixes most of it without changing any label (argmax is invariant to T). T goes into the checkpoint
metadata (`temperature`) and `Segmenter` divides the logits by it, so every output, `probabilities`
and the node's `confidence` are calibrated.

    msseg-calibrate --checkpoint runs/x/best.safetensors --data-root ../shared/datasets/camvid \\
        --split val --out runs/x/calibrated.safetensors --png docs/reliability.png

Expected calibration error (ECE): pixels binned by confidence (15 equal-width bins), the mean of
|accuracy - confidence| weighted by each bin's share of pixels, over every labelled pixel of the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msseg_core.classes import IGNORE_INDEX

BINS = 15


@dataclass
class Reliability:
    """Per confidence bin: pixel count, summed confidence, correct pixels (streaming accumulation)."""

    bins: int = BINS
    count: np.ndarray = field(default=None)  # type: ignore[assignment]
    confidence: np.ndarray = field(default=None)  # type: ignore[assignment]
    correct: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("count", "confidence", "correct"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.bins, dtype=np.float64))

    def update(self, logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> None:
        """N x C x H x W logits, N x H x W labels (IGNORE_INDEX never counts)."""
        prob = torch.softmax(logits.float() / temperature, dim=1)
        conf, pred = prob.max(1)
        valid = target != IGNORE_INDEX
        conf, hit = conf[valid].double(), (pred[valid] == target[valid]).double()
        idx = (conf * self.bins).long().clamp_(max=self.bins - 1)
        self.count += torch.bincount(idx, minlength=self.bins).cpu().numpy()
        self.confidence += torch.bincount(idx, weights=conf, minlength=self.bins).cpu().numpy()
        self.correct += torch.bincount(idx, weights=hit, minlength=self.bins).cpu().numpy()

    @property
    def ece(self) -> float:
        total = self.count.sum()
        if total == 0:
            return float("nan")
        return float(np.abs(self.correct - self.confidence).sum() / total)

    def accuracy(self) -> np.ndarray:
        return np.divide(self.correct, self.count, out=np.full(self.bins, np.nan), where=self.count > 0)

    def mean_confidence(self) -> np.ndarray:
        return np.divide(self.confidence, self.count, out=np.full(self.bins, np.nan), where=self.count > 0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T minimising mean NLL of softmax(logits / T) for P x C logits and P labels.

    The NLL is convex in 1/T, so a bracketed golden-section search on log T finds the optimum to 1e-4
    without tuning a step size (LBFGS on such a flat function sometimes stops early).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or labels.numel() == 0:
        raise ValueError(f"need P x C logits and P labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-4:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


@dataclass
class TemperatureFit:
    temperature: float
    before: Reliability
    after: Reliability
    pixels_fitted: int

    def summary(self) -> dict:
        return {"temperature": round(self.temperature, 4), "ece_before": round(self.before.ece, 5),
                "ece_after": round(self.after.ece, 5), "bins": self.before.bins,
                "pixels_fitted": self.pixels_fitted, "pixels_scored": int(self.before.count.sum())}


def fit_split_temperature(segmenter, dataset, pixels_per_image: int = 20000, seed: int = 0, batch_size: int = 1,
                          bins: int = BINS) -> TemperatureFit:
    """Fit T on a random sample of each image's labelled pixels; score ECE before/after on all of them.

    The segmenter's own temperature is set aside while fitting (restored after), so re-calibrating a
    calibrated checkpoint fits from its raw logits.
    """
    from msseg_core.evaluation.evaluate import check_classes, iter_logits

    check_classes(segmenter, dataset)
    saved, segmenter.temperature = segmenter.temperature, 1.0
    g = torch.Generator().manual_seed(seed)
    sample_logits, sample_labels = [], []
    before = Reliability(bins)
    try:
        for logits, target in iter_logits(segmenter, dataset, batch_size=batch_size):
            before.update(logits, target)
            flat = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
            labels = target.reshape(-1)
            valid = torch.nonzero(labels != IGNORE_INDEX).squeeze(1).cpu()
            take = valid[torch.randperm(valid.numel(), generator=g)[: pixels_per_image * logits.shape[0]]]
            sample_logits.append(flat[take.to(flat.device)].float().cpu())
            sample_labels.append(labels[take.to(labels.device)].cpu())
        if not sample_labels or sum(t.numel() for t in sample_labels) == 0:
            raise ValueError("no labelled pixels to calibrate on")
        x, y = torch.cat(sample_logits), torch.cat(sample_labels)
        temperature = fit_temperature(x, y)
        after = Reliability(bins)
        for logits, target in iter_logits(segmenter, dataset, batch_size=batch_size):
            after.update(logits, target, temperature)
    finally:
        segmenter.temperature = saved
    return TemperatureFit(temperature, before, after, int(y.numel()))


def plot_reliability(result: TemperatureFit, path: str | Path, title: str = "") -> Path:
    """Reliability diagrams before and after: accuracy per confidence bin against the diagonal."""
    from msseg_core.io import new_figure, save_figure

    fig = new_figure(figsize=(9, 4.2), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, rel, name in ((axes[0], result.before, "T = 1"), (axes[1], result.after, f"T = {result.temperature:.2f}")):
        edges = np.linspace(0, 1, rel.bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        acc = rel.accuracy()
        share = rel.count / max(rel.count.sum(), 1)
        ax.bar(centres, np.nan_to_num(acc), width=1 / rel.bins, edgecolor="black", color="#4c72b0", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.plot(centres, share, ":", color="#dd8452", marker=".", label="share of pixels")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max class probability)")
        ax.set_title(f"{name}: ECE {100 * rel.ece:.2f}%")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
