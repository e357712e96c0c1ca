"""Networks: the registry contract (any input size in, logits at input size out, finite gradients) for
every registered model, plus the parts each paper reading rests on (mssanet's Table 1 dilations and
eq. 1-2 attention, FCN's bilinear deconvolutions and VGG16 weight loading) and the cost counters."""

from __future__ import annotations

import inspect
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from msseg_core.models import _REGISTRY, build_model, list_models
from msseg_core.models.encoders import load_vgg16_encoder
from msseg_core.models.layers import bilinear_upsampler, scale_channels
from msseg_core.models.mssanet import TABLE1_DILATIONS_WH, PositionAttention, dilation_schedule
from msseg_core.models.stats import count_parameters, gflops

TINY = 0.0625
NUM_CLASSES = 5
ALL_MODELS = list_models()


def _tiny(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, width=TINY, **kwargs)


def _train_step(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(*shape, requires_grad=True)
    y = model(x)
    assert y.shape == (shape[0], NUM_CLASSES, *shape[2:])
    target = torch.randint(0, NUM_CLASSES, (shape[0], *shape[2:]))
    F.cross_entropy(y, target).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    return y


# ------------------------------------------------------------------------------------- every model


def test_registry_lists_all_networks():
    assert set(ALL_MODELS) >= {"mssanet", "fcn32s", "fcn16s", "fcn8s", "dsunet", "lraspp_mobilenet_v3_large",
                               "deeplabv3_mobilenet_v3_large"}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_train_any_size(name):
    model = _tiny(name)
    for shape in ((2, 3, 37, 53), (2, 3, 64, 48), (2, 3, 1, 1)):
        _train_step(model, shape)
    if name != "deeplabv3_mobilenet_v3_large":  # ASPP image pooling: BN on 1x1 needs a batch > 1 to train
        _train_step(model, (1, 3, 37, 53))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_any_size(name):
    model = _tiny(name).eval()
    with torch.no_grad():
        for shape in ((1, 3, 1, 1), (1, 3, 37, 53), (1, 3, 33, 7)):
            y = model(torch.randn(*shape))
            assert isinstance(y, torch.Tensor)
            assert y.shape == (1, NUM_CLASSES, *shape[2:])
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_are_aligned_with_the_input(name):
    """Output pixel (i, j) is the prediction for input pixel (i, j): the net pads bottom/right and crops,
    so it equals running the explicitly padded image and cropping (a resize would shift every pixel)."""
    if name in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"):
        pytest.skip("torchvision models resize their stride-16 logits to the input size (bilinear)")
    model = _tiny(name).eval()
    x = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        y = model(x)
        y_padded = model(F.pad(x, (0, 64 - 61, 0, 64 - 50), mode="replicate"))
    assert y_padded.shape[-2:] == (64, 64)
    assert torch.allclose(y, y_padded[..., :50, :61], atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_builder_kwargs_json_and_width(name):
    """Builder defaults must survive a checkpoint's JSON; `width` must shrink the network."""
    params = inspect.signature(_REGISTRY[name]).parameters
    assert "width" in params and "num_classes" in params
    defaults = {k: p.default for k, p in params.items() if k != "num_classes"}
    assert json.loads(json.dumps(defaults)) == defaults
    small = count_parameters(_tiny(name))
    torch.manual_seed(0)
    bigger = count_parameters(build_model(name, NUM_CLASSES, width=4 * TINY))
    assert bigger > small


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        build_model("no_such_net", 3)
    for name in ALL_MODELS:
        assert name in str(err.value)


# ------------------------------------------------------------------------------------------ mssanet


@pytest.mark.parametrize("num_pools", range(6))
def test_mssanet_ablations(num_pools):
    for branches, fusion in itertools.product((1, 2), ("none", "concat")):
        model = _tiny("mssanet", num_pools=num_pools, branches=branches, fusion=fusion)
        _train_step(model, (2, 3, 21, 30))
    model = _tiny("mssanet", num_pools=num_pools, attention=False)
    assert model.attention is None
    _train_step(model, (2, 3, 21, 30))


def test_mssanet_knobs_change_the_network():
    base = _tiny("mssanet")
    two = _tiny("mssanet", branches=2)
    assert count_parameters(two) == count_parameters(base) + count_parameters(two.branch_fuse)  # shared encoder
    assert count_parameters(_tiny("mssanet", branches=2, fusion="none")) == count_parameters(_tiny("mssanet",
                                                                                                 fusion="none"))
    assert count_parameters(_tiny("mssanet", fusion="none")) < count_parameters(base)
    assert count_parameters(_tiny("mssanet", attention=False)) < count_parameters(base)
    assert gflops(two, 64, 64) > gflops(base, 64, 64)
    assert gflops(_tiny("mssanet", num_pools=3), 64, 64) > gflops(base, 64, 64)


@pytest.mark.parametrize("bad", [{"num_pools": 6}, {"num_pools": -1}, {"branches": 3}, {"fusion": "sum"},
                                 {"dilation": "diag"}, {"attention": "yes"}, {"width": 0.0}])
def test_mssanet_rejects_bad_args(bad):
    with pytest.raises(ValueError):
        build_model("mssanet", 3, **bad)


def test_table1_receptive_fields():
    """Six stacked 3x3 convs with our reading of Table 1 have its receptive fields (W x H)."""
    expected_wh = [(3, 3), (5, 7), (9, 15), (17, 31), (33, 63), (65, 127)]
    schedule = dilation_schedule(6, "table")
    assert schedule == [(h, w) for w, h in TABLE1_DILATIONS_WH]
    x = torch.zeros(1, 1, 131, 71, requires_grad=True)
    y = x
    for k, dil in enumerate(schedule):
        conv = nn.Conv2d(1, 1, 3, padding=dil, dilation=dil, bias=False)
        nn.init.ones_(conv.weight)
        y = conv(y)
        (grad,) = torch.autograd.grad(y[0, 0, 65, 35], x, retain_graph=True)
        rows = grad[0, 0].abs().sum(1).nonzero()
        cols = grad[0, 0].abs().sum(0).nonzero()
        w, h = int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)
        assert (w, h) == expected_wh[k]


def test_mssanet_encoder_dilations():
    def dilations(model):
        return [[tuple(layer[0].dilation) for layer in block] for block in model.blocks]

    a, b, c = (1, 1), (2, 1), (4, 2)
    assert dilations(_tiny("mssanet")) == [[a, b], [a, b], [a, b, c], [a, b, c], [a, b, c]]
    # num_pools=3: blocks 4 and 5 share a resolution and run Table 1's six columns.
    assert dilations(_tiny("mssanet", num_pools=3))[3:] == [[a, b, c], [(8, 4), (16, 8), (32, 16)]]
    # num_pools=0: one run of 13 convs, the schedule cycles after column 6.
    flat = [d for blk in dilations(_tiny("mssanet", num_pools=0)) for d in blk]
    assert flat == dilation_schedule(6) * 2 + [a]
    assert dilations(_tiny("mssanet", dilation="transposed"))[2] == [a, (1, 2), (2, 4)]
    assert {d for blk in dilations(_tiny("mssanet", dilation="none")) for d in blk} == {a}


def _reference_attention(att: PositionAttention, a: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-2 written out: s_ji = softmax_i(B_i . C_j); E_j = alpha * sum_i s_ji D_i + A_j."""
    n, c, h, w = a.shape
    b = att.key(a).flatten(2)  # N x C' x HW
    cq = att.query(a).flatten(2)
    d = att.value(a).flatten(2)  # N x C x HW
    s = torch.softmax(torch.einsum("nki,nkj->nji", b, cq), dim=2)  # s[n, j, i], normalised over i
    e = torch.einsum("nji,nci->ncj", s, d)
    return att.alpha * e.reshape(n, c, h, w) + a


def test_attention_starts_as_identity_then_follows_eq_1_2():
    torch.manual_seed(0)
    att = PositionAttention(16)
    a = torch.randn(2, 16, 5, 7)
    assert att.alpha.item() == 0.0 and att.alpha.requires_grad
    assert torch.equal(att(a), a)
    with torch.no_grad():
        att.alpha.fill_(0.7)
    out = att(a)
    assert not torch.allclose(out, a)
    assert torch.allclose(out, _reference_attention(att, a), atol=1e-5)
    # Pooled variant (num_pools < 4): identity at alpha 0, same shape.
    pooled = PositionAttention(16, pool=4)
    assert torch.equal(pooled(a), a)


def test_mssanet_attention_identity_in_the_network_and_alpha_learns():
    model = _tiny("mssanet").eval()
    seen = {}
    model.attention.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0], out=out))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert torch.equal(seen["inp"], seen["out"])
    _train_step(model, (2, 3, 64, 96))
    assert model.attention.alpha.grad is not None and model.attention.alpha.grad.abs() > 0


# ---------------------------------------------------------------------------------------------- FCN


def test_bilinear_upsampler_matches_interpolate():
    x = torch.linspace(0, 1, 9 * 11).reshape(1, 1, 9, 11).repeat(1, 3, 1, 1)
    x = torch.sin(3 * x) + x.transpose(-1, -2).reshape(1, 3, 9, 11)
    for factor in (2, 4, 8, 16, 32):
        up = bilinear_upsampler(3, factor)(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert up.shape == ref.shape
        m = factor  # the deconvolution zero-pads where interpolate clamps: compare the interior
        assert torch.allclose(up[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)


@pytest.mark.parametrize("name,factors", [("fcn32s", {"upscore": 32}),
                                          ("fcn16s", {"upscore2": 2, "upscore16": 16}),
                                          ("fcn8s", {"upscore2": 2, "upscore_pool4": 2, "upscore8": 8})])
def test_fcn_deconvs_are_bilinear_at_init(name, factors):
    model = _tiny(name)
    x = torch.linspace(-1, 1, 6 * 7).reshape(1, 1, 6, 7).repeat(1, NUM_CLASSES, 1, 1)
    x = x + 0.3 * torch.arange(NUM_CLASSES).view(1, -1, 1, 1)  # channels must not mix
    for attr, factor in factors.items():
        layer = getattr(model, attr)
        assert isinstance(layer, nn.ConvTranspose2d) and layer.stride == (factor, factor)
        with torch.no_grad():
            up = layer(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        m = factor
        assert torch.allclose(up[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)
    for attr in ("score_pool4", "score_pool3"):
        if hasattr(model, attr):
            assert not getattr(model, attr).weight.any()  # FCN: skips start at zero


@pytest.fixture(scope="module")
def vgg16_state() -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state dict, encoder part only (the 120 M classifier weights would make a 550 MB
    temp file; built on the meta device so they are never allocated), filled with random values."""
    torch.manual_seed(1)
    with torch.device("meta"):
        vgg = torchvision.models.vgg16(weights=None)
    return {k: torch.randn(v.shape) for k, v in vgg.state_dict().items() if k.startswith("features.")}


@pytest.mark.slow
def test_load_vgg16_encoder_round_trip(tmp_path, vgg16_state):
    """A torchvision VGG16 state dict, as .pth (torch.load, weights_only) and .safetensors, lands in the
    encoders of fcn (width 1: torchvision's own layout and names) and mssanet (its 13 convs)."""
    torch.save(vgg16_state, tmp_path / "vgg16.pth")
    save_file(vgg16_state, str(tmp_path / "vgg16.safetensors"))
    torch.manual_seed(0)
    fcn = build_model("fcn32s", NUM_CLASSES)
    assert {f"features.{k}" for k in fcn.features.state_dict()} == set(vgg16_state)
    load_vgg16_encoder(fcn, tmp_path / "vgg16.pth")
    for key, value in vgg16_state.items():
        assert torch.equal(fcn.state_dict()[key], value)
    mss = build_model("mssanet", NUM_CLASSES, width=1.0)
    load_vgg16_encoder(mss, tmp_path / "vgg16.safetensors")
    convs = [layer[0] for block in mss.blocks for layer in block]
    vgg_convs = sorted({int(k.split(".")[1]) for k in vgg16_state})
    for conv, idx in zip(convs, vgg_convs, strict=True):
        assert torch.equal(conv.weight, vgg16_state[f"features.{idx}.weight"])
    with torch.no_grad():
        for model in (fcn.eval(), mss.eval()):
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES, 32, 32)


def test_load_vgg16_encoder_errors(tmp_path, vgg16_state):
    path = tmp_path / "vgg16.safetensors"
    save_file(vgg16_state, str(path))
    small = _tiny("fcn8s")
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(ValueError, match="width=1"):
        load_vgg16_encoder(small, path)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # untouched
    with pytest.raises(TypeError, match="fcn8s.*mssanet"):
        load_vgg16_encoder(_tiny("dsunet"), path)
    partial = dict(vgg16_state)
    del partial["features.28.weight"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="features.28.weight"):
        load_vgg16_encoder(build_model("mssanet", 3, width=1.0), tmp_path / "partial.safetensors")
    with pytest.raises(FileNotFoundError):
        load_vgg16_encoder(small, tmp_path / "missing.pth")


def test_load_vgg16_classifier_becomes_fc6_fc7(tmp_path):
    """VGG's fc6/fc7 are convolutionalised (shown at width 1/16: the same code path, a tiny file)."""
    torch.manual_seed(0)
    features = make_layers([v if v == "M" else scale_channels(v, TINY) for v in cfgs["D"]])
    c5, cf = scale_channels(512, TINY), scale_channels(4096, TINY)
    fc6, fc7 = nn.Linear(c5 * 49, cf), nn.Linear(cf, cf)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state |= {"classifier.0.weight": fc6.weight, "classifier.0.bias": fc6.bias,
              "classifier.3.weight": fc7.weight, "classifier.3.bias": fc7.bias}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp_path / "vgg.safetensors"))
    model = _tiny("fcn8s")
    load_vgg16_encoder(model, tmp_path / "vgg.safetensors")
    pool5 = torch.randn(1, c5, 7, 7)  # what VGG's classifier sees after avgpool (7x7)
    with torch.no_grad():
        assert torch.allclose(model.fc6(pool5)[0, :, 3, 3], fc6(pool5.flatten(1))[0], atol=1e-5)
        h = torch.randn(1, cf, 1, 1)
        assert torch.allclose(model.fc7(h).flatten(), fc7(h.flatten(1)).flatten(), atol=1e-5)


# ------------------------------------------------------------------------------------ dsunet, peers


def test_dsunet_blocks_are_parallel_dilated_depthwise():
    model = _tiny("dsunet", depth=3)
    block = model.down[1][0]
    dws = [branch[0] for branch in block.branches]
    assert [dw.dilation for dw in dws] == [(1, 1), (2, 2), (3, 3)]
    assert all(dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3) for dw in dws)
    assert len(model.down) == 4 and len(model.up) == 3
    _train_step(model, (2, 3, 19, 27))


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_peers_match_torchvision_at_width_1(name):
    torch.manual_seed(0)
    ours = build_model(name, NUM_CLASSES).state_dict()
    ref = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                         num_classes=NUM_CLASSES).state_dict()
    assert {f"net.{k}": v.shape for k, v in ref.items()} == {k: v.shape for k, v in ours.items()}
    assert not any("aux" in k for k in ours)


# ------------------------------------------------------------------------------------------- stats


def test_gflops_of_one_conv_is_analytic():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 2 FLOPs per multiply-add, one per output element per input tap.
    assert gflops(conv, 16, 20) == pytest.approx(2 * 8 * 16 * 20 * 3 * 3 * 3 / 1e9, rel=1e-9)
    conv.train()
    gflops(conv, 4, 4)
    assert conv.training
    with torch.device("meta"):  # counted without computing: how the num_pools=0 ablation can be costed
        meta_conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert gflops(meta_conv, 16, 20) == gflops(conv, 16, 20)


def test_count_parameters():
    conv = nn.Conv2d(3, 8, 3)
    shared = nn.Sequential(conv, nn.ReLU(), conv)
    assert count_parameters(conv) == 8 * 27 + 8
    assert count_parameters(shared) == 8 * 27 + 8
    conv.bias.requires_grad_(False)
    assert count_parameters(conv, trainable_only=True) == 8 * 27
