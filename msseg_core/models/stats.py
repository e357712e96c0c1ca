"""Model size and cost: parameter count and forward GFLOPs, the numbers a model choice is made on."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gflops(model: nn.Module, height: int, width: int) -> float:
    """Forward GFLOPs (FLOPs / 1e9) of one N=1 x 3 x height x width input, eval mode, no grad.

    Counted by `torch.utils.flop_counter.FlopCounterMode`: a multiply-add is 2 FLOPs (so this is twice
    the "GMACs" many papers report); only matmul-like ops (conv, transposed conv, mm/bmm, attention) are
    counted, not BN, activations, pooling or interpolation. The model's train/eval mode is restored.
    A model built under `torch.device("meta")` is counted without computing anything (huge configs).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, 3, height, width, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
