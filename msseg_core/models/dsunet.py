"""DSUNet: U-Net whose every block runs parallel depthwise-separable dilated 3x3 convolutions
(/work/shared/papers/002: Cityscapes U-Net, rates 1-3, concatenated).

Block: for each rate r in (1, 2, 3) a depthwise-separable conv (depthwise 3x3 at dilation r, pointwise
1x1, then BN + ReLU: Keras' SeparableConv2D, no norm between the two halves, which also saves a memory-bound
pass over the input on CPU); the three are concatenated and fused by 1x1 conv + BN + ReLU. Each
U-Net level has two blocks (U-Net's double conv); `depth` 2x2 max-pool downsamplings, 2x2 stride-2
transposed-conv upsamplings, concatenated skips. The README gives no layer table, so channels follow
U-Net (`base_channels` doubling per level, times `width`). The input is replicate-padded to a multiple
of 2^depth and the logits cropped back, so any input size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.models import register_model
from msseg_core.models.layers import check_num_classes, pad_to_multiple, scale_channels

RATES = (1, 2, 3)


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


class MultiRateDSBlock(nn.Module):
    """Parallel depthwise-separable 3x3 convs at dilations 1, 2, 3 -> concat -> 1x1 fuse + BN + ReLU."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, cin, 3, padding=r, dilation=r, groups=cin, bias=False),
                nn.Conv2d(cin, cout, 1, bias=False), *_bn_relu(cout),
            )
            for r in rates
        )
        self.fuse = nn.Sequential(nn.Conv2d(cout * len(rates), cout, 1, bias=False), *_bn_relu(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], 1))


def _level(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(MultiRateDSBlock(cin, cout), MultiRateDSBlock(cout, cout))


class DSUNet(nn.Module):
    """U-Net of MultiRateDSBlocks; `depth` poolings, channels base * 2^level * width."""

    def __init__(self, num_classes: int, width: float = 1.0, depth: int = 4, base_channels: int = 32):
        super().__init__()
        check_num_classes(num_classes)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 6:
            raise ValueError(f"depth must be an int in 1..6, got {depth!r}")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels must be an int >= 1, got {base_channels!r}")
        self.depth = depth
        chans = [scale_channels(base_channels * 2**level, width) for level in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = 3
        for c in chans:
            self.down.append(_level(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            self.up.append(nn.ConvTranspose2d(chans[level + 1], chans[level], 2, stride=2))
            self.dec.append(_level(2 * chans[level], chans[level]))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 2**self.depth)
        skips = []
        for i, level in enumerate(self.down):
            x = level(x)
            if i < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)[..., :h, :w]


@register_model("dsunet")
def dsunet(num_classes: int, width: float = 1.0, depth: int = 4, base_channels: int = 32) -> DSUNet:
    """U-Net with parallel depthwise-separable dilated (1, 2, 3) convolutions in every block."""
    return DSUNet(num_classes, width=width, depth=depth, base_channels=base_channels)
