"""Peer baselines from torchvision: LR-ASPP and DeepLabV3 on MobileNetV3-Large, untrained (weights=None,
weights_backbone=None: nothing is downloaded), without aux classifier, returning the logits tensor.

`width` is MobileNetV3's `width_mult`. torchvision's public builders do not expose it, so the backbone is
built with `mobilenet_v3_large(weights=None, dilated=True, width_mult=width)` (the kwarg is forwarded to
`torchvision.models.mobilenetv3._mobilenet_v3_conf`, channels rounded to multiples of 8) and assembled by
torchvision's private `_lraspp_mobilenetv3` / `_deeplabv3_mobilenetv3`, exactly as the public
`lraspp_mobilenet_v3_large` / `deeplabv3_mobilenet_v3_large` do: at width 1 the modules and state-dict
keys (under `net.`) are torchvision's. At width != 1 the heads scale too (LR-ASPP's 128 and ASPP's 256
channels times width, multiple of 8), so tiny instances are tiny. These private helpers may move between
torchvision versions (checked against 0.29).

Training note: DeepLabV3's ASPP image-pooling branch has BatchNorm on a 1x1 map, so (as in torchvision) it
cannot train on a batch of one; neither can any BN network whose deepest map is 1x1 (e.g. a 1x1 image).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models._utils import _make_divisible
from torchvision.models.segmentation.deeplabv3 import ASPP, _deeplabv3_mobilenetv3
from torchvision.models.segmentation.lraspp import LRASPPHead, _lraspp_mobilenetv3

from msseg_core.models import register_model
from msseg_core.models.layers import check_num_classes


class SegmentationOut(nn.Module):
    """Wraps a torchvision segmentation model so forward returns the 'out' logits tensor, not a dict."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _backbone(width: float) -> nn.Module:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return mobilenet_v3_large(weights=None, dilated=True, width_mult=float(width))


@register_model("lraspp_mobilenet_v3_large")
def lraspp_mobilenet_v3_large(num_classes: int, width: float = 1.0) -> SegmentationOut:
    """torchvision LR-ASPP, MobileNetV3-Large backbone (output stride 16), random init."""
    check_num_classes(num_classes)
    net = _lraspp_mobilenetv3(_backbone(width), num_classes)
    if width != 1:
        head = net.classifier
        inter = _make_divisible(128 * width, 8)
        net.classifier = LRASPPHead(head.low_classifier.in_channels, head.cbr[0].in_channels, num_classes, inter)
    return SegmentationOut(net)


@register_model("deeplabv3_mobilenet_v3_large")
def deeplabv3_mobilenet_v3_large(num_classes: int, width: float = 1.0) -> SegmentationOut:
    """torchvision DeepLabV3 (ASPP rates 12/24/36), MobileNetV3-Large backbone, random init, no aux head."""
    check_num_classes(num_classes)
    net = _deeplabv3_mobilenetv3(_backbone(width), num_classes, aux=False)
    if width != 1:
        in_channels = net.classifier[0].convs[0][0].in_channels
        c = _make_divisible(256 * width, 8)
        net.classifier = nn.Sequential(  # torchvision's DeepLabHead layout with `c` channels instead of 256
            ASPP(in_channels, (12, 24, 36), c),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, num_classes, 1),
        )
    return SegmentationOut(net)
