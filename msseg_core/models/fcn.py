"""FCN-32s / 16s / 8s (Long et al., CVPR 2015) on a VGG16 encoder, plus the shared helpers of this package.

Layout follows torchvision's VGG16 (`features` built by `torchvision.models.vgg.make_layers` from config "D",
so module names and indices are torchvision's at every width) so a torchvision VGG16 state dict loads at
width 1 (`load_vgg16_encoder`), including VGG's fully connected fc6/fc7 "convolutionalised" into the 7x7 and
1x1 convolutions, as in the paper. Differences from the Caffe original, and why:

- Any input size: instead of the original `pad=100` on conv1_1 plus crop offsets, the input is padded
  (replicate) to a multiple of 32 and the logits are cropped back; the transposed convolutions use
  kernel 2s, stride s, padding s/2, which makes them exact s-fold upsamplers aligned with the grid
  (bilinear-initialised they equal `F.interpolate(..., align_corners=False)` away from the border).
- `width` scales every channel count (fc6/fc7 = 4096 * width) so tests and CPU runs can build tiny nets.
- No BatchNorm: it would change the torchvision layout and break loading VGG16 weights. From scratch,
  prefer `mssanet` (which has BN); FCN is the pretrained-encoder baseline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from msseg_core.models import register_model

VGG16_CFG: list[int | str] = list(cfgs["D"])
# Indices into torchvision's vgg16().features (same at every width, see make_layers).
VGG16_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL3_INDEX, POOL4_INDEX = 16, 23


# ----------------------------------------------------------------------------------------- helpers


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


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable `factor`-fold upsampler (kernel 2f, stride f, padding f/2), bilinear per channel at init."""
    if factor < 2 or factor % 2:
        raise ValueError(f"upsampling factor must be even and >= 2, got {factor}")
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        k = bilinear_kernel(2 * factor)
        for c in range(channels):
            up.weight[c, c] = k
    return up


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


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


# ------------------------------------------------------------------------------- VGG16 weight loading


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    elif path.suffix in (".pth", ".pt"):
        state = torch.load(str(path), weights_only=True, map_location="cpu")
    else:
        raise ValueError(f"{path}: expected a .safetensors or .pth file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def load_vgg16_encoder(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy a local torchvision VGG16 state dict (`.safetensors` or `.pth`) into a model's encoder.

    The 13 `features.*` convolutions are required; VGG's `classifier.0/3` (fc6/fc7) are reshaped into
    7x7/1x1 convolutions where the model has matching ones (FCN at width 1) and skipped otherwise.
    Supported: fcn32s/16s/8s and mssanet (conv weights only: its convs are bias-free, followed by BN).
    Nothing is copied unless every required tensor matches, so a failed load leaves the model untouched.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    mapping_fn = getattr(model, "vgg16_mapping", None)
    if mapping_fn is None:
        raise TypeError(
            f"{type(model).__name__} has no VGG16 encoder; load_vgg16_encoder supports fcn32s, fcn16s, fcn8s, mssanet"
        )
    mapping: dict[str, nn.Module] = mapping_fn()
    state = _read_state_dict(Path(path))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    problems: list[str] = []
    for prefix, module in mapping.items():
        required = prefix.startswith("features.")
        w_key, b_key = f"{prefix}.weight", f"{prefix}.bias"
        if w_key not in state:
            if required:
                problems.append(f"missing {w_key}")
            continue
        src = state[w_key]
        dst = module.weight
        if src.dim() == 2 and dst.dim() == 4 and src.numel() == dst.numel() and src.shape[0] == dst.shape[0]:
            src = src.reshape(dst.shape)  # fully connected -> convolution (FCN's "convolutionalisation")
        if src.shape != dst.shape:
            if required:
                problems.append(f"{w_key}: file {tuple(state[w_key].shape)} vs model {tuple(dst.shape)}")
            continue
        entries = [(dst, src)]
        bias = getattr(module, "bias", None)
        if bias is not None and b_key in state:  # bias-free targets (mssanet: conv + BN) drop VGG's bias
            if state[b_key].shape != bias.shape:
                if required:
                    problems.append(f"{b_key}: file {tuple(state[b_key].shape)} vs model {tuple(bias.shape)}")
                continue
            entries.append((bias, state[b_key]))
        plan.extend(entries)
    if problems:
        width = getattr(model, "width", None)
        hint = f" (model width {width}; VGG16 weights need width=1)" if width not in (None, 1, 1.0) else ""
        raise ValueError(f"{path}: not a VGG16 state dict for this model{hint}: " + "; ".join(problems[:6]))
    with torch.no_grad():
        for dst, src in plan:
            dst.copy_(src.to(dtype=dst.dtype, device=dst.device))


def vgg16_conv_shapes(width: float = 1.0) -> Sequence[tuple[int, int]]:
    """(in, out) channels of VGG16's 13 convolutions at `width` (used by mssanet to mirror the layout)."""
    shapes, cin = [], 3
    for v in VGG16_CFG:
        if v != "M":
            cout = scale_channels(int(v), width)
            shapes.append((cin, cout))
            cin = cout
    return shapes
