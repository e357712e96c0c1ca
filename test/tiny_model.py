"""The smallest real network in the registry, saved as a real checkpoint: for tests that need a model
but not accuracy (core, node, CLI and reliability tests all use this one writer)."""

from __future__ import annotations

import os
from pathlib import Path

TINY_MODEL = ("mssanet", {"width": 0.0625})
TINY_INPUT_SIZE = (32, 48)  # network input (height, width): fast on a CPU


def write_tiny_checkpoint(path: str | os.PathLike, model: str = TINY_MODEL[0],
                          input_size: tuple[int, int] = TINY_INPUT_SIZE, seed: int = 0, **model_args) -> Path:
    """A randomly initialised (eval-mode) tiny network with CamVid classes, saved with the real save path."""
    import torch

    from msseg_core.checkpoint import CheckpointMeta, save_checkpoint
    from msseg_core.classes import CAMVID
    from msseg_core.models import build_model

    args = dict(TINY_MODEL[1]) if model == TINY_MODEL[0] and not model_args else model_args
    torch.manual_seed(seed)
    net = build_model(model, num_classes=CAMVID.num_classes, **args).eval()
    meta = CheckpointMeta(model=model, model_args=args, class_names=list(CAMVID.names),
                          palette=[list(c) for c in CAMVID.palette], road_classes=list(CAMVID.road),
                          input_size=list(input_size), dataset="camvid")
    return save_checkpoint(path, net, meta)
