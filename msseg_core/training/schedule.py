"""The learning-rate schedule as a pure function of the optimizer step, so resuming (or changing the number of
epochs) only needs the step count."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_factor(schedule: str, total_steps: int, warmup_steps: int, power: float = 0.9) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimizer step: a pure function of the step, so resuming
    (or extending `epochs`) only needs the step count.

    poly: linear warmup, then (1 - t) ** power.  onecycle: cosine rise from lr/25 over the warmup,
    then cosine annealing to lr/25e4 (torch's OneCycleLR shape, without momentum cycling).
    """
    total, warm = max(1, total_steps), max(0, min(warmup_steps, total_steps))

    def poly(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return (1.0 - t) ** power

    def onecycle(step: int, start: float = 1 / 25, end: float = 1 / 25e4) -> float:
        if step < warm:
            return start + (1 - start) * (1 - math.cos(math.pi * step / warm)) / 2
        t = min(1.0, (step - warm) / max(1, total - warm))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2

    return {"poly": poly, "onecycle": onecycle}[schedule]


def set_schedule_step(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put a LambdaLR (and its optimizer's learning rates) at `step` without stepping through."""
    scheduler.last_epoch = step
    lrs = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
