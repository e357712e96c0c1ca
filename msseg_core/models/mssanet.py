"""MSSANet: "Semantic Segmentation With Multi Scale Spatial Attention For Self Driving Cars" (Sagar &
Soundrapandiyan, 2020; /work/shared/papers/001), section 3.2, Table 1, equations 1-2, ablations of Tables 2-3.

Network (default: width 0.5, num_pools 5, branches 1, fusion 'concat', attention on, dilation 'table')::

    input (any H x W; replicate-padded to a multiple of the total stride, logits cropped back)
      VGG16 encoder: 5 blocks of 2,2,3,3,3 dilated 3x3 conv+BN+ReLU, 2x2 max pool after the first
        `num_pools` blocks; block b (b >= 3) gets a residual shortcut from block b-2's output
      [branches=2: the same encoder on the input at half resolution, merged before fc6]
      fc6 7x7 conv, fc7 1x1 conv (+BN, ReLU, dropout)  -> position attention (eqs. 1-2)
      decoder: per level from stride 2^(num_pools-1) down to 4: transposed conv (4x4, stride 2), concat
        with the encoder feature of that level, 3x3 conv  -> 1x1 class scores at stride 4
      transposed conv (8x8, stride 4, bilinear-initialised) -> logits at input size

The paper is ambiguous in many places; our reading of each, and why:

1. Backbone: an ImageNet-pretrained VGG16 on 224x224 resized inputs. We train from scratch, so every
   conv is followed by BatchNorm (convs are bias-free), and we keep the input size (any H, W).
   `load_vgg16_encoder` (fcn.py) still copies VGG16's 13 conv weights at width=1 (biases dropped: BN
   subtracts the mean anyway; the dilations differ from VGG's, so it is an initialisation only).
2. Width: default 0.5 (VGG16 channels / 2, fc 512; 15 M parameters): a quarter of full width's cost
   (83 vs 328 GFLOPs at 512x768, 39 vs 154 at 360x480, 2 FLOPs per multiply-add), which leaves room
   for the >100 FPS GPU target and lets a 0.25-width copy (10 GFLOPs) train on a CPU. Without
   pretraining, VGG's ImageNet-sized width mostly adds over-fitting capacity on CamVid's 367 images.
3. "Two convolutional layers ... with strides of 7*7 and 1*1" on top of VGG16: read as FCN's fc6/fc7,
   i.e. a 7x7 and a 1x1 convolution with stride 1 (a stride of 7 would misalign every later layer).
   Their width is 1024 * width instead of FCN's 4096 (lean; fc6 alone would be 103 M parameters).
4. Table 1 dilation pairs, "(Width, Height)" = (1,1) (1,2) (2,4) (4,8) (8,16) (16,32), receptive fields
   3x3 5x7 9x15 17x31 33x63 65x127. The receptive-field row matches the pairs exactly as printed (width
   first) and only if the six layers share one resolution (RF = 1 + 2 * sum of dilations per axis). So
   we read them literally: torch dilation (dh, dw) = (Height, Width), vertical twice horizontal, and apply
   the schedule to each run of consecutive 3x3 convs at one resolution: it restarts after every pooling
   and cycles after column 6 (a sawtooth, as hybrid dilated convolution does, instead of saturating at
   32). With 5 pools VGG's blocks use columns 1-2 or 1-3; an unpooled block continues the run of the
   previous one (num_pools=3: blocks 4+5 are exactly Table 1's six layers), so a removed pooling is
   partly made up for by dilation. `dilation='transposed'` swaps the axes (more horizontal context,
   plausible for wide driving images) and `dilation='none'` is plain VGG16, both for ablation.
   Table 1's "feature maps" (128 ... 32) are not used: section 3.2 says the backbone is VGG16.
5. "For the convolutional layer we didn't use any padding": we pad ("same"), otherwise the output shrinks
   and the concat fusion would need crops; the contract is logits at input size.
6. Up-sampling: "four transposed convolutions with 4*4 kernel and strides of 4*4", "the last layer is a
   transposed convolution with 8*8 kernel": read with FCN's kernel = 2 x stride convention, i.e. 4x4 /
   stride 2 per decoder level (stride 4 four times would up-sample 256x, against five 2x poolings) and a
   final 8x8 / stride 4 class-score up-sampler initialised to bilinear. The decoder has num_pools - 2
   such levels (3 at the default 5 pools): the text's four, plus a 4x last layer, would need 6 poolings,
   more than Table 2's maximum of 5, so the count follows num_pools.
7. "Concat layers" / fusion: U-Net-style concatenation of each decoder level with the encoder output at
   the same stride (16, 8, 4). "Skip connections in between alternate blocks": a residual shortcut from
   block b-2 into block b (b = 3, 4, 5), average pool + 1x1 conv + BN, added before the block's last ReLU.
8. Spatial attention, eqs. 1-2: the text mixes names (A, B, C, D, X; a scale "beta" then alpha; E_j adds
   C_j). Read as DANet's position attention on the bottleneck feature A (fc7 output): B, C = 1x1 convs
   of A to C/8 channels, D = 1x1 conv of A to C channels, s_ji = softmax_i(B_i . C_j) (no 1/sqrt(d) scale,
   as in eq. 1), E_j = alpha * sum_i s_ji D_i + A_j with alpha a learnable scalar starting at 0 (the block
   is the identity at init). It sits at the bottleneck, where positions are few (H/32 * W/32 = 690 at
   720x960), so its O(N^2) memory is bounded; with num_pools < 4 it runs on A average-pooled to stride 16
   and its output is up-sampled bilinearly before the residual sum.
9. Eq. 3 (sub-stage aggregation) and Table 5 ("Backbone A/B x N") are DFANet's and describe no part of
   this network: not implemented.
10. Table 3 "branches": branch 2 is a second scale, the input average-pooled to half resolution through
    the same (weight-shared) encoder: no extra encoder parameters, +25% encoder FLOPs. Its encoder output
    is up-sampled to branch 1's and merged before fc6, so fc6/fc7 and the attention see both scales.
    "Fusion" 'concat' = the concat layers (encoder-decoder, and branch merge by concat + 1x1 conv);
    'none' = no encoder-decoder concatenation and the branches summed (they must be merged somehow).
11. "12 labels" but 11 classes listed (Table 4 has 12 IoUs): the network takes `num_classes`; whether a
    void class is trained is the dataset's choice. It returns logits, not the softmax of section 3.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.models import register_model
from msseg_core.models.encoders import LITE, VGG16_CONV_INDICES, build_encoder
from msseg_core.models.layers import (
    ConvBN,
    SeparableConvBN,
    bilinear_upsampler,
    check_num_classes,
    init_conv_weights,
    pad_to_multiple,
    scale_channels,
)

# Table 1 as printed: (width, height) dilation per layer.
TABLE1_DILATIONS_WH: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32))
DILATION_MODES = ("table", "transposed", "none")
FUSIONS = ("none", "concat")
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))  # (convs, channels)
DECODER_CHANNELS = (128, 128, 96, 64)  # pretrained-encoder decoder at strides 32, 16, 8, 4 (docstring, 12)
STRIDE2_CHANNELS = 32  # its optional level at stride 2 (EncoderMSSANet's decoder_stride=2)


def dilation_schedule(run_length: int, mode: str = "table") -> list[tuple[int, int]]:
    """torch (dh, dw) dilations of `run_length` consecutive same-resolution 3x3 convs (see docstring, 4)."""
    if mode not in DILATION_MODES:
        raise ValueError(f"dilation must be one of {DILATION_MODES}, got {mode!r}")
    out = []
    for i in range(run_length):
        dw, dh = TABLE1_DILATIONS_WH[i % len(TABLE1_DILATIONS_WH)]
        out.append((dh, dw) if mode == "table" else (dw, dh) if mode == "transposed" else (1, 1))
    return out



def check_decoder_options(fusion: str, attention: bool, dropout: float) -> None:
    """The decoder options both MSSANet variants share: a clear ValueError for a bad one."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if not isinstance(attention, bool):
        raise ValueError(f"attention must be a bool, got {attention!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

class PositionAttention(nn.Module):
    """Eqs. 1-2: E_j = alpha * sum_i softmax_i(B_i . C_j) D_i + A_j, alpha learnable, 0 at init.

    `pool` > 1 computes the attention on A average-pooled by `pool` (bounded memory) and up-samples it.
    """

    def __init__(self, channels: int, reduction: int = 8, pool: int = 1):
        super().__init__()
        inner = max(1, channels // reduction)
        self.key = nn.Conv2d(channels, inner, 1)  # B
        self.query = nn.Conv2d(channels, inner, 1)  # C
        self.value = nn.Conv2d(channels, channels, 1)  # D
        self.alpha = nn.Parameter(torch.zeros(1))
        self.pool = pool

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        src = F.avg_pool2d(a, self.pool, ceil_mode=True) if self.pool > 1 else a
        n, c, h, w = src.shape
        b = self.key(src).flatten(2).transpose(1, 2).unsqueeze(1)  # N x 1 x HW x C/8
        q = self.query(src).flatten(2).transpose(1, 2).unsqueeze(1)
        d = self.value(src).flatten(2).transpose(1, 2).unsqueeze(1)  # N x 1 x HW x C
        out = F.scaled_dot_product_attention(q, b, d, scale=1.0)  # out_j = sum_i softmax_i(C_j . B_i) D_i
        out = out.squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        if self.pool > 1:
            out = F.interpolate(out, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return a + self.alpha.to(out.dtype) * out


class MSSANet(nn.Module):
    """See the module docstring for the architecture and the reading of the paper behind each part."""

    def __init__(self, num_classes: int, width: float = 0.5, num_pools: int = 5, branches: int = 1,
                 fusion: str = "concat", attention: bool = True, dilation: str = "table", dropout: float = 0.1):
        super().__init__()
        check_num_classes(num_classes)
        if not isinstance(num_pools, int) or isinstance(num_pools, bool) or not 0 <= num_pools <= 5:
            raise ValueError(f"num_pools must be an int in 0..5, got {num_pools!r}")
        if branches not in (1, 2) or isinstance(branches, bool):
            raise ValueError(f"branches must be 1 or 2, got {branches!r}")
        check_decoder_options(fusion, attention, dropout)
        self.width, self.num_pools, self.branches, self.fusion = width, num_pools, branches, fusion
        chans = [scale_channels(c, width) for _, c in VGG16_BLOCKS]

        # Encoder: the dilation schedule runs over same-resolution convs, restarting after a pool (docstring, 4).
        positions: list[list[int]] = []  # per block, each conv's position in its run
        run_len = 0
        for b, (n_convs, _) in enumerate(VGG16_BLOCKS):
            positions.append(list(range(run_len, run_len + n_convs)))
            run_len = 0 if b < num_pools else run_len + n_convs
        schedule = dilation_schedule(max(max(p) for p in positions) + 1, dilation)
        self.blocks = nn.ModuleList()
        cin = 3
        for b, (n_convs, _) in enumerate(VGG16_BLOCKS):
            layers = []
            for j, pos in enumerate(positions[b]):  # the last conv's ReLU comes after the shortcut sum
                layers.append(ConvBN(cin, chans[b], 3, schedule[pos], relu=j < n_convs - 1))
                cin = chans[b]
            self.blocks.append(nn.Sequential(*layers))
        # Residual shortcuts between alternate blocks: out_{b-2} -> block b (0-based b = 2, 3, 4).
        self.shortcuts = nn.ModuleList()
        for b in range(2, 5):
            down = 2 if b - 1 < num_pools else 1  # block b-1 pools -> block b runs at half the resolution
            self.shortcuts.append(nn.Sequential(
                nn.AvgPool2d(down) if down > 1 else nn.Identity(),
                ConvBN(chans[b - 2], chans[b], 1, relu=False),
            ))

        c5, cf = chans[4], scale_channels(1024, width)
        self.branch_fuse = ConvBN(2 * c5, c5, 1) if branches == 2 and fusion == "concat" else None
        self.fc6 = nn.Sequential(ConvBN(c5, cf, 7), nn.Dropout2d(dropout))
        self.fc7 = nn.Sequential(ConvBN(cf, cf, 1), nn.Dropout2d(dropout))
        self.attention = PositionAttention(cf, pool=2 ** max(0, 4 - num_pools)) if attention else None

        # Decoder: levels at stride 2^(num_pools-1) ... 4 (docstring, 6-7).
        self.levels = list(range(num_pools - 1, 1, -1))
        self.ups = nn.ModuleList()
        self.fuses = nn.ModuleList()
        cin = cf
        for level in self.levels:
            cl = chans[level - 1]  # encoder output at stride 2^level is block `level`'s (1-based)
            self.ups.append(nn.Sequential(
                nn.ConvTranspose2d(cin, cl, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cl),
                nn.ReLU(inplace=True),
            ))
            self.fuses.append(ConvBN(cl + (cl if fusion == "concat" else 0), cl, 3))
            cin = cl
        self.score = nn.Conv2d(cin, num_classes, 1)
        self.out_stride = 2 ** min(num_pools, 2)
        self.upscore = bilinear_upsampler(num_classes, self.out_stride) if self.out_stride > 1 else nn.Identity()
        init_conv_weights(self, skip=(self.upscore,))

    def vgg16_mapping(self) -> dict[str, nn.Module]:
        """torchvision VGG16 `features.<i>` -> our conv taking its weight (see fcn.load_vgg16_encoder)."""
        convs = [layer[0] for block in self.blocks for layer in block]
        return {f"features.{i}": conv for i, conv in zip(VGG16_CONV_INDICES, convs, strict=True)}

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the 5 blocks (pooled where the block pools)."""
        outs: list[torch.Tensor] = []
        for b, block in enumerate(self.blocks):
            y = block(x)
            if b >= 2:
                y = y + self.shortcuts[b - 2](outs[b - 2])
            y = F.relu(y, inplace=True)
            x = F.max_pool2d(y, 2) if b < self.num_pools else y
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 2 ** self.num_pools * self.branches)
        outs = self._encode(x)
        bottom = outs[-1]
        if self.branches == 2:
            half = self._encode(F.avg_pool2d(x, 2))[-1]
            half = F.interpolate(half, size=bottom.shape[-2:], mode="bilinear", align_corners=False)
            bottom = self.branch_fuse(torch.cat([bottom, half], 1)) if self.branch_fuse is not None else bottom + half
        y = self.fc7(self.fc6(bottom))
        if self.attention is not None:
            y = self.attention(y)
        for level, up, fuse in zip(self.levels, self.ups, self.fuses, strict=True):
            y = up(y)
            if self.fusion == "concat":
                y = torch.cat([y, outs[level - 1]], 1)
            y = fuse(y)
        return self.upscore(self.score(y))[..., :h, :w]


class EncoderMSSANet(nn.Module):
    """The MSSANet decoder on a pretrained encoder (the paper builds on ImageNet VGG16; see docstring, 12).

    `decoder_stride` 4 (the default, as the paper's decoder) scores classes at stride 4; 2 adds a refinement
    level at stride 2 (not in the paper; `StrideTwoRefiner`). At a small network input a pole or a sign post
    is narrower than a stride-4 cell, so stride-4 scores cannot draw it.
    """

    def __init__(self, num_classes: int, encoder: str = "efficientnet_lite0", decoder_width: float = 1.0,
                 fusion: str = "concat", attention: bool = True, dilation: str = "table", dropout: float = 0.1,
                 decoder_stride: int = 4):
        super().__init__()
        check_num_classes(num_classes)
        check_decoder_options(fusion, attention, dropout)
        if decoder_stride not in (2, 4) or isinstance(decoder_stride, bool):
            raise ValueError(f"decoder_stride must be 2 or 4, got {decoder_stride!r}")
        self.fusion = fusion
        self.encoder = build_encoder(encoder)
        c4, c8, c16, c32 = self.encoder.channels
        d32, d16, d8, d4 = (scale_channels(c, decoder_width) for c in DECODER_CHANNELS)
        # Multi-scale dilated module: Table 1's six dilations in series, residual, at stride 32.
        self.context_in = ConvBN(c32, d32, 1)
        self.context = nn.ModuleList(SeparableConvBN(d32, d32, 3, dil, relu=False)
                                     for dil in dilation_schedule(len(TABLE1_DILATIONS_WH), dilation))
        self.attention = PositionAttention(d32) if attention else None
        self.dropout = nn.Dropout2d(dropout)
        self.ups = nn.ModuleList()
        self.fuses = nn.ModuleList()
        cin = d32
        for skip, cout in ((c16, d16), (c8, d8), (c4, d4)):
            self.ups.append(bilinear_upsampler(cin, 2, depthwise=True))
            cat = cin + (skip if fusion == "concat" else 0)
            self.fuses.append(nn.Sequential(ConvBN(cat, cout, 1), SeparableConvBN(cout, cout, 3)))
            cin = cout
        self.score = nn.Conv2d(cin, num_classes, 1)
        self.upscore = bilinear_upsampler(num_classes, 4, depthwise=True)
        init_conv_weights(self, skip=(self.encoder, self.upscore, *self.ups))
        self.refine = (StrideTwoRefiner(cin, self.encoder.stride2_channels,
                                        scale_channels(STRIDE2_CHANNELS, decoder_width), num_classes)
                       if decoder_stride == 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        if self.refine is not None:
            c2, c4, c8, c16, c32 = self.encoder(x, stride2=True)
        else:
            c4, c8, c16, c32 = self.encoder(x)
        y = self.context_in(c32)
        for block in self.context:
            y = F.relu(y + block(y), inplace=True)
        if self.attention is not None:
            y = self.attention(y)
        y = self.dropout(y)
        for skip, up, fuse in zip((c16, c8, c4), self.ups, self.fuses, strict=True):
            y = up(y)
            if self.fusion == "concat":
                y = torch.cat([y, skip], 1)
            y = fuse(y)
        logits = self.upscore(self.score(y))
        if self.refine is not None:
            logits = logits + self.refine(y, c2)
        return logits[..., :h, :w]


class StrideTwoRefiner(nn.Module):
    """EncoderMSSANet's `decoder_stride=2` level: the stride-4 decoder feature, up-sampled, fused with the
    encoder's stride-2 feature, scored and added to the stride-4 logits as a correction at twice their
    resolution. The correction's classifier starts at zero, so a trained stride-4 network grown by this
    level (`model.init_fresh: [refine]`) predicts exactly what it did until training moves it; a whole new
    stride-2 level instead (first tried) replaced the trained classifier and fell to 18% val mIoU.
    Cost: a narrow 1x1 + separable 3x3 at stride 2 and one more depthwise up-sampler to the input size.
    """

    def __init__(self, cin: int, skip: int, width: int, num_classes: int):
        super().__init__()
        self.up = bilinear_upsampler(cin, 2, depthwise=True)
        self.fuse = nn.Sequential(ConvBN(cin + skip, width, 1), SeparableConvBN(width, width, 3))
        self.score = nn.Conv2d(width, num_classes, 1)
        self.upscore = bilinear_upsampler(num_classes, 2, depthwise=True)
        init_conv_weights(self, skip=(self.up, self.upscore))
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, y: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        return self.upscore(self.score(self.fuse(torch.cat([self.up(y), c2], 1))))


@register_model("mssanet")
def mssanet(num_classes: int, encoder: str = "vgg16", width: float = 0.5, num_pools: int = 5, branches: int = 1,
            fusion: str = "concat", attention: bool = True, dilation: str = "table", dropout: float = 0.1,
            decoder_width: float = 1.0, decoder_stride: int = 4) -> nn.Module:
    """Multi-scale spatial attention network; knobs are the paper's ablations (Tables 2-3) plus ours.

    encoder 'vgg16': the paper's dilated VGG16 (from scratch, `width`, `num_pools`, `branches`);
    'efficientnet_lite0/1/2': the same decoder ideas on an ImageNet-pretrainable encoder (`decoder_width`,
    `decoder_stride`).
    """
    if encoder == "vgg16":
        if decoder_width != 1.0 or decoder_stride != 4:
            raise ValueError("decoder_width and decoder_stride apply to the efficientnet_lite encoders; vgg16 "
                             "scales with width")
        return MSSANet(num_classes, width=width, num_pools=num_pools, branches=branches, fusion=fusion,
                       attention=attention, dilation=dilation, dropout=dropout)
    if encoder not in LITE:
        raise ValueError(f"unknown encoder {encoder!r}; known: vgg16, {', '.join(LITE)}")
    if (width, num_pools, branches) != (0.5, 5, 1):
        raise ValueError("width, num_pools and branches shape the vgg16 encoder; with a pretrained encoder "
                         "use decoder_width")
    return EncoderMSSANet(num_classes, encoder=encoder, decoder_width=decoder_width, fusion=fusion,
                          attention=attention, dilation=dilation, dropout=dropout, decoder_stride=decoder_stride)
