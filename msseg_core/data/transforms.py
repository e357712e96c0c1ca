"""Joint image/mask transforms on torchvision.transforms.v2 and tv_tensors.

The image travels as `tv_tensors.Image` and the label as `tv_tensors.Mask`, so every geometric op v2
applies to both with the same parameters, and v2 resizes masks with NEAREST: class ids are never
interpolated. Colour jitter only touches the Image. TrainTransform takes what `SegmentationDataset` yields
(uint8 HxWx3 RGB numpy, uint8 HxW numpy; CxHxW / HxW tensors are accepted too) and returns plain tensors:
(float32 3xHxW normalised image, int64 HxW mask with 255 = ignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from msseg_core.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from msseg_core.classes import IGNORE_INDEX

DEFAULT_JITTER = 0.25
"""Brightness, contrast and saturation jitter strength when `photometric=True` (hue is left alone)."""


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def to_tv_tensors(image: np.ndarray | torch.Tensor,
                  mask: np.ndarray | torch.Tensor) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """HxWx3 numpy (or 3xHxW tensor) image and HxW mask -> tv_tensors, so v2 knows which is which."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:
        img = image
    msk = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
    if tuple(img.shape[-2:]) != tuple(msk.shape[-2:]):
        raise ValueError(f"image size {tuple(img.shape[-2:])} != mask size {tuple(msk.shape[-2:])}")
    return tv_tensors.Image(img), tv_tensors.Mask(msk)


class RandomScale(v2.Transform):
    """Resize image and mask by one factor drawn uniformly from `scale_range` (relative to the input size),
    times `stretch` horizontally; the Mask goes through v2's mask kernel, i.e. NEAREST.

    `stretch` != 1 is for a network whose input has another aspect ratio than the frames (192x320 for
    360x480 frames: 1.25): inference squeezes every object by that much, so training shows them squeezed too.
    """

    def __init__(self, scale_range: tuple[float, float], stretch: float = 1.0):
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if not stretch > 0:
            raise ValueError(f"stretch must be > 0, got {stretch}")
        self.scale_range = (float(lo), float(hi))
        self.stretch = float(stretch)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = next(x.shape[-2:] for x in flat_inputs if isinstance(x, tv_tensors.Image | tv_tensors.Mask))
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s * self.stretch))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return inpt
        return F.resize(inpt, params["size"], antialias=True)


def _to_dtype() -> v2.ToDtype:
    """uint8 Image -> float32 in [0, 1], Mask -> int64 (ids unchanged)."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True)


class TrainTransform:
    """Training augmentation: random scale (`stretch`: see `RandomScale`), crop (padding image 0 and mask
    255), horizontal flip and brightness/contrast/saturation jitter, then ImageNet normalisation.

    Random draws use torch's global RNG (seed it, or per DataLoader worker, for reproducibility).
    `photometric` is True/False or the jitter strength (True = 0.25).
    """

    def __init__(self, crop_size: int | Sequence[int] = (360, 480), scale_range: tuple[float, float] = (0.5, 2.0),
                 hflip: float = 0.5, photometric: bool | float = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, stretch: float = 1.0):
        self.crop_size = _pair(crop_size)
        self.scale_range = scale_range
        self.hflip = float(hflip)
        jitter = DEFAULT_JITTER if photometric is True else float(photometric or 0.0)
        steps: list[v2.Transform] = [
            RandomScale(scale_range, stretch),
            v2.RandomCrop(self.crop_size, pad_if_needed=True,
                          fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
        ]
        if self.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(self.hflip))
        steps.append(_to_dtype())
        if jitter > 0:  # on float: several times faster than v2's uint8 blending, and no re-quantisation
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        steps.append(v2.Normalize(list(mean), list(std)))
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: np.ndarray | torch.Tensor,
                 mask: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = self.pipeline(*to_tv_tensors(image, mask))
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


__all__ = ["DEFAULT_JITTER", "RandomScale", "TrainTransform", "to_tv_tensors"]
