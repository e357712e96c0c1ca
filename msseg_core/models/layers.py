"""Blocks and helpers that several networks share (one copy each; the networks import them from here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_num_classes(num_classes: int) -> None:
    """Builders take `num_classes` from checkpoint metadata: reject anything but a positive int early."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


def scale_channels(channels: int, width: float) -> int:
    """Channels after the width multiplier: rounded, never below 1."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(channels * width)))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad bottom/right so H and W are multiples of `multiple` (crop with [..., :H, :W])."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def bilinear_kernel(size: int) -> torch.Tensor:
    """The 2-D bilinear interpolation kernel FCN initialises its upsampling deconvolutions with."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    r = torch.arange(size, dtype=torch.float64)
    w = 1 - (r - center).abs() / factor
    return (w[:, None] * w[None, :]).float()


def bilinear_upsampler(channels: int, factor: int, depthwise: bool = False) -> nn.ConvTranspose2d:
    """Learnable `factor`-fold upsampler (kernel 2f, stride f, padding f/2), bilinear per channel at init.

    depthwise: one kernel per channel (groups=channels), channels x cheaper; full: any channel may
    learn to mix into any other (FCN's original form).
    """
    if factor < 2 or factor % 2:
        raise ValueError(f"upsampling factor must be even and >= 2, got {factor}")
    groups = channels if depthwise else 1
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=groups,
                            bias=False)
    with torch.no_grad():
        up.weight.zero_()
        k = bilinear_kernel(2 * factor)
        for c in range(channels):
            up.weight[c, 0 if depthwise else c] = k
    return up


class ConvBN(nn.Sequential):
    """conv (bias-free) + BN (+ ReLU); 'same' padding for odd kernels at any dilation."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: tuple[int, int] = (1, 1), relu: bool = True,
                 groups: int = 1):
        pad = (dilation[0] * (kernel // 2), dilation[1] * (kernel // 2))
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConvBN(nn.Sequential):
    """Depthwise k x k (dilated) + BN + ReLU, then pointwise 1 x 1 + BN (+ ReLU): a 3x3 conv's reach at
    about 1/9 of its cost when channels are many, which is what keeps full-resolution decoders cheap."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: tuple[int, int] = (1, 1),
                 relu: bool = True):
        super().__init__(ConvBN(cin, cin, kernel, dilation, groups=cin), ConvBN(cin, cout, 1, relu=relu))


def init_conv_weights(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """He init for (transposed) convolutions, unit BatchNorm; modules in `skip` keep their weights."""
    skipped = {id(p) for m in skip for p in m.parameters()}
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and id(m.weight) not in skipped:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and id(m.weight) not in skipped:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
