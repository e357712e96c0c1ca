"""An exponential moving average of the weights (`train.ema_decay`), the network a run validates and ships.

The trained weights still move every step; the average trails them. It is free at inference (the same
network, other numbers) and smooths out where the last steps of a noisy schedule happened to stop, which is
what a model meeting streets it never saw pays for. The average runs over parameters and buffers alike
(BatchNorm's running statistics too, as timm's ModelEmaV3 and torch's `AveragedModel(use_buffers=True)`),
so the averaged network needs no extra pass to re-estimate them.

Warm-up: step t averages with min(decay, (1 + t) / (10 + t)), so the first steps of a run from random weights
do not linger in the average for thousands of steps (timm's and TensorFlow's rule). Integer buffers (BatchNorm's
batch counters) are copied, not averaged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def decay_at(decay: float, step: int) -> float:
    """The averaging weight of the old average at the step-th update (0-based) under warm-up."""
    return min(decay, (1.0 + step) / (10.0 + step))


def weight_ema(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of `model` that `update_parameters(model)` after every optimizer step keeps averaged."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # AveragedModel copies the model at its first update (n_averaged 0) and calls this from the second on.
        d = decay_at(decay, int(n_averaged) - 1)
        if averaged[0].is_floating_point():  # one call per device and dtype
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            torch._foreach_copy_(averaged, current)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
