"""How much a split's mIoU, or the gap between two models on it, depends on which frames were labelled.

A block bootstrap over the split's frames: each resample draws runs of `block` consecutive frames (the
split's order is name order, so a drive's frames in time) from random starts, wrapping round at the end,
sums their confusion matrices and recomputes the IoUs. Runs, not single frames, because neighbouring
frames of a drive show the same scene: a single-frame bootstrap would count ten near-copies as ten
pieces of evidence and give too narrow an interval. Two models are compared *paired*: both are rescored
on the same resampled frames, so what the frames have in common (an easy or a hard stretch of road)
cancels out of the difference.

What it does not measure: how much a score moves between two training runs of one recipe (the seed);
for that, train twice. A class absent from a resample drops out of that resample's mean, as it does in
`ConfusionMatrix.miou`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msseg_core.evaluation.metrics import iou_of, json_number, mean_over_present


@dataclass(frozen=True)
class Interval:
    """A point estimate (on all frames) and its central bootstrap interval."""

    estimate: float
    low: float
    high: float

    def to_list(self) -> list[float | None]:
        return [json_number(self.estimate), json_number(self.low), json_number(self.high)]


def block_indices(num_frames: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """`num_frames` frame indices made of runs of `block` consecutive frames from random starts (circular)."""
    if num_frames < 1 or block < 1:
        raise ValueError(f"need at least one frame and a block of at least one, got {num_frames} and {block}")
    block = min(block, num_frames)
    starts = rng.integers(0, num_frames, size=-(-num_frames // block))
    return ((starts[:, None] + np.arange(block)) % num_frames).ravel()[:num_frames]


def _interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    samples = samples[~np.isnan(samples)]
    if not samples.size:
        return Interval(estimate, math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


@dataclass(frozen=True)
class BootstrapSettings:
    samples: int = 1000
    block: int = 10
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 2 or self.block < 1 or not 0 < self.level < 1:
            raise ValueError(f"bootstrap: need samples >= 2, block >= 1 and 0 < level < 1, got {self}")

    def resamples(self, num_frames: int) -> np.ndarray:
        """samples x num_frames frame indices, the same for every model scored with these settings."""
        rng = np.random.default_rng(self.seed)
        return np.stack([block_indices(num_frames, self.block, rng) for _ in range(self.samples)])


def _check(mats: np.ndarray) -> np.ndarray:
    mats = np.asarray(mats)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2] or not len(mats):
        raise ValueError(f"expected a stack of per-frame confusion matrices (N x C x C, N >= 1), got {mats.shape}")
    return mats


def _resampled_ious(mats: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    return iou_of(np.stack([mats[idx].sum(0) for idx in resamples]))


@dataclass(frozen=True)
class Estimate:
    """mIoU and per-class IoU (or, paired, A minus B), each with its interval."""

    miou: Interval
    per_class: list[Interval]
    a_ahead: float | None = None  # paired only: the share of resamples in which A's mIoU is above B's

    def to_dict(self, class_names: Sequence[str], settings: BootstrapSettings) -> dict:
        """JSON: [estimate, low, high] lists (null where a class never occurs) and the settings that made them."""
        out = {"samples": settings.samples, "block": settings.block, "level": settings.level, "seed": settings.seed,
               "miou": self.miou.to_list(),
               "per_class_iou": {n: i.to_list() for n, i in zip(class_names, self.per_class, strict=True)}}
        if self.a_ahead is not None:
            out["a_ahead"] = self.a_ahead
        return out


def score_interval(mats: np.ndarray, settings: BootstrapSettings) -> Estimate:
    """One model's mIoU and per-class IoU with their intervals, from its N x C x C per-frame matrices."""
    mats = _check(mats)
    whole = iou_of(mats.sum(0))
    boot = _resampled_ious(mats, settings.resamples(len(mats)))
    miou = _interval(float(mean_over_present(whole)), mean_over_present(boot), settings.level)
    return Estimate(miou, [_interval(float(whole[c]), boot[:, c], settings.level) for c in range(len(whole))])


def paired_difference(mats_a: np.ndarray, mats_b: np.ndarray, settings: BootstrapSettings) -> Estimate:
    """A - B, both rescored on each resample's frames (the frames' shared difficulty cancels)."""
    mats_a, mats_b = _check(mats_a), _check(mats_b)
    if mats_a.shape != mats_b.shape:
        raise ValueError(f"the two models were scored on different frames or classes: {mats_a.shape} vs {mats_b.shape}")
    resamples = settings.resamples(len(mats_a))
    whole_a, whole_b = iou_of(mats_a.sum(0)), iou_of(mats_b.sum(0))
    boot_a, boot_b = _resampled_ious(mats_a, resamples), _resampled_ious(mats_b, resamples)
    diff = mean_over_present(boot_a) - mean_over_present(boot_b)
    estimate = float(mean_over_present(whole_a) - mean_over_present(whole_b))
    per_class = [_interval(float(whole_a[c] - whole_b[c]), boot_a[:, c] - boot_b[:, c], settings.level)
                 for c in range(len(whole_a))]
    return Estimate(_interval(estimate, diff, settings.level), per_class, float(np.mean(diff > 0)))
