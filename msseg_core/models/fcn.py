"""FCN-32s / 16s / 8s (Long et al., CVPR 2015) on a VGG16 encoder.

Layout follows torchvision's VGG16 (`features` built by `torchvision.models.vgg.make_layers` from config "D",
so module names and indices are torchvision's at every width) so a torchvision VGG16 state dict loads at
width 1 (`encoders.load_vgg16_encoder`), including VGG's fully connected fc6/fc7 "convolutionalised" into
the 7x7 and 1x1 convolutions, as in the paper. Differences from the Caffe original, and why:

- Any input size: instead of the original `pad=100` on conv1_1 plus crop offsets, the input is padded
  (replicate) to a multiple of 32 and the logits are cropped back; the transposed convolutions use
  kernel 2s, stride s, padding s/2, which makes them exact s-fold upsamplers aligned with the grid
  (bilinear-initialised they equal `F.interpolate(..., align_corners=False)` away from the border).
- `width` scales every channel count (fc6/fc7 = 4096 * width) so tests and CPU runs can build tiny nets.
- No BatchNorm: it would change the torchvision layout and break loading VGG16 weights. From scratch,
  prefer `mssanet` (which has BN); FCN is the pretrained-encoder baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from msseg_core.models import register_model
from msseg_core.models.encoders import VGG16_CONV_INDICES
from msseg_core.models.layers import bilinear_upsampler, check_num_classes, pad_to_multiple, scale_channels

VGG16_CFG: list[int | str] = list(cfgs["D"])
POOL3_INDEX, POOL4_INDEX = 16, 23  # indices into torchvision's vgg16().features (same at every width)


# --------------------------------------------------------------------------------------------- FCN


class FCN(nn.Module):
    """VGG16-FCN with `stride` 32, 16 or 8 (score skips from pool4, and pool3 for 8s)."""

    def __init__(self, num_classes: int, stride: int = 8, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        check_num_classes(num_classes)
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride must be 8, 16 or 32, got {stride}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.stride = stride
        self.width = width
        cfg = [v if v == "M" else scale_channels(v, width) for v in VGG16_CFG]
        self.features = make_layers(cfg, batch_norm=False)
        c3, c4, c5 = scale_channels(256, width), scale_channels(512, width), scale_channels(512, width)
        cf = scale_channels(4096, width)
        self.fc6 = nn.Conv2d(c5, cf, 7, padding=3)
        self.fc7 = nn.Conv2d(cf, cf, 1)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(cf, num_classes, 1)
        if stride == 32:
            self.upscore = bilinear_upsampler(num_classes, 32)
        else:
            self.upscore2 = bilinear_upsampler(num_classes, 2)
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            if stride == 16:
                self.upscore16 = bilinear_upsampler(num_classes, 16)
            else:
                self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
                self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
                self.upscore8 = bilinear_upsampler(num_classes, 8)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init (ConvTranspose2d is not a Conv2d subclass)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # FCN zero-initialises the skip scores: training starts from the coarser net's prediction.
        for name in ("score_pool4", "score_pool3"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)

    def vgg16_mapping(self) -> dict[str, nn.Module]:
        """torchvision VGG16 state-dict prefix -> module that takes that tensor (see load_vgg16_encoder)."""
        out: dict[str, nn.Module] = {f"features.{i}": self.features[i] for i in VGG16_CONV_INDICES}
        out["classifier.0"] = self.fc6
        out["classifier.3"] = self.fc7
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        pool3 = pool4 = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == POOL3_INDEX:
                pool3 = x
            elif i == POOL4_INDEX:
                pool4 = x
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        x = self.drop7(F.relu(self.fc7(x), inplace=True))
        score = self.score_fr(x)
        if self.stride == 32:
            out = self.upscore(score)
        else:
            score = self.upscore2(score) + self.score_pool4(pool4)
            if self.stride == 16:
                out = self.upscore16(score)
            else:
                score = self.upscore_pool4(score) + self.score_pool3(pool3)
                out = self.upscore8(score)
        return out[..., :h, :w]


@register_model("fcn32s")
def fcn32s(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-32s: single 32x upsampling of the fc7 scores."""
    return FCN(num_classes, stride=32, width=width, dropout=dropout)


@register_model("fcn16s")
def fcn16s(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-16s: fc7 scores x2 + pool4 scores, then 16x."""
    return FCN(num_classes, stride=16, width=width, dropout=dropout)


@register_model("fcn8s")
def fcn8s(num_classes: int, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-8s: adds pool3 scores at stride 8, then 8x."""
    return FCN(num_classes, stride=8, width=width, dropout=dropout)
