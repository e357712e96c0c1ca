"""Flip test-time augmentation (Segmenter tta='flip'): the logits of a frame and of its mirror, mirrored back,
averaged before softmax and temperature, on every path and engine.

Note what a mirror-symmetric frame does and does not show: for a symmetric input x the mirror pass sees x
again, so TTA gives (net(x) + flip(net(x))) / 2, a symmetric map; that equals the plain net(x) only when the
network itself commutes with mirroring (checked with a network built to), not for a trained CNN in general
(checked too: its plain output on a symmetric frame is not symmetric).
"""

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from msseg_core.checkpoint import CheckpointMeta
from msseg_core.classes import CAMVID
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter

T1 = {"device": "cpu", "threads": 1}
NET = (32, 48)  # the tiny checkpoint's network input (tiny_model.TINY_INPUT_SIZE)
ENGINES = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tta_cache")


@pytest.fixture(scope="module")
def pairs(tiny_checkpoint, cache):
    """(plain, flip) Segmenters of the tiny checkpoint per engine."""
    return {b: tuple(Segmenter.from_checkpoint(tiny_checkpoint, backend=b, cache_dir=cache, tta=t, **T1)
                     for t in ("none", "flip")) for b in ENGINES}


def frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mirror_frame(h, w, seed=0):
    half = frame(h, w // 2, seed)
    return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], 1))


def network_logits(seg, rgb):
    return seg.run_network(rgb).logits


@pytest.mark.parametrize("backend", ENGINES)
def test_flip_averages_the_logits_of_the_frame_and_of_its_mirror(pairs, backend):
    plain, tta = pairs[backend]
    assert tta.describe()["tta"] == "flip" and plain.describe()["tta"] == "none"
    rgb = frame(*NET, seed=1)  # at the network's size: the mirror's input is exactly the input mirrored
    want = 0.5 * (network_logits(plain, rgb) + network_logits(plain, rgb[:, ::-1].copy()).flip(-1))
    got = network_logits(tta, rgb)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, network_logits(plain, rgb), atol=1e-3)  # TTA changed something
    # Every path: full-size logits (what msseg-eval scores), probabilities, labels, a batch of two frames.
    batch = torch.from_numpy(np.stack([rgb, frame(*NET, seed=2)]))
    full = tta.logits_from_tensor(batch)
    torch.testing.assert_close(full[:1], want, rtol=1e-5, atol=1e-5)
    second = frame(*NET, seed=2)
    torch.testing.assert_close(full[1:], 0.5 * (network_logits(plain, second)
                                                + network_logits(plain, second[:, ::-1].copy()).flip(-1)),
                               rtol=1e-5, atol=1e-5)
    probs = tta.probabilities(rgb)
    np.testing.assert_allclose(probs, torch.softmax(want[0], 0).numpy(), atol=1e-5)
    np.testing.assert_array_equal(tta.predict(rgb), probs.argmax(0))
    nets = tta.run_network_batch([rgb, second])
    for net, expected in zip(nets, (want, full[1:]), strict=True):
        torch.testing.assert_close(net.logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ENGINES)
def test_flip_works_at_any_frame_size_and_for_every_output(pairs, backend):
    plain, tta = pairs[backend]
    rgb = frame(45, 70, seed=3)
    out = tta.segment(rgb, OUTPUTS)
    assert set(out) == set(OUTPUTS) and all(v.shape[:2] == (45, 70) for v in out.values())
    # The frame and its mirror resized to the network are each other's mirror up to the uint8 resize's
    # rounding: the average of the two plain passes matches within that.
    full = plain.logits_from_tensor(torch.from_numpy(np.stack([rgb, rgb[:, ::-1].copy()])))
    want = 0.5 * (full[0] + full[1].flip(-1))
    got = tta.logits_from_tensor(torch.from_numpy(rgb[None]))[0]
    assert (got - want).abs().max() < 0.05
    assert (got.argmax(0) == want.argmax(0)).float().mean() > 0.99


def test_a_mirror_symmetric_frame_gives_a_mirror_symmetric_result(pairs):
    plain, tta = pairs["torch"]
    rgb = mirror_frame(*NET, seed=4)
    x = plain.network_input(rgb)
    assert torch.equal(x, x.flip(-1))  # the network input is symmetric too
    got = network_logits(tta, rgb)
    assert torch.equal(got, got.flip(-1))
    labels = tta.predict(rgb)
    np.testing.assert_array_equal(labels, labels[:, ::-1])
    # ... which the plain pass of this (trained-like, not mirror-equivariant) network is not:
    plain_logits = network_logits(plain, rgb)
    assert not torch.allclose(plain_logits, plain_logits.flip(-1), atol=1e-3)
    torch.testing.assert_close(got, 0.5 * (plain_logits + plain_logits.flip(-1)), rtol=1e-5, atol=1e-5)


class MirrorNet(nn.Module):
    """Convolutions with left-right symmetric kernels and zero padding: net(flip(x)) == flip(net(x))."""

    def __init__(self, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, classes, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_(0.5 * (conv.weight + conv.weight.flip(-1)))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_flip_leaves_a_mirror_equivariant_network_unchanged():
    meta = CheckpointMeta(model="mirror", model_args={}, class_names=list(CAMVID.names),
                          palette=[list(c) for c in CAMVID.palette], road_classes=list(CAMVID.road),
                          input_size=list(NET))
    model = MirrorNet(CAMVID.num_classes).eval()
    plain = Segmenter(model, meta, backend="torch", fuse=False, **T1)
    tta = Segmenter(model, meta, backend="torch", fuse=False, tta="flip", **T1)
    for rgb in (frame(*NET, seed=5), mirror_frame(*NET, seed=6), frame(50, 77, seed=7)):
        torch.testing.assert_close(tta.logits_from_tensor(torch.from_numpy(rgb[None])),
                                   plain.logits_from_tensor(torch.from_numpy(rgb[None])), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(tta.predict(rgb), plain.predict(rgb))


def test_tta_is_validated_kept_by_replicas_and_taken_by_from_checkpoint(tiny_checkpoint, pairs):
    with pytest.raises(ValueError, match="tta"):
        Segmenter.from_checkpoint(tiny_checkpoint, backend="torch", tta="rotate", **T1)
    twin = pairs["torch"][1].replica()
    assert twin.tta == "flip" and twin.describe()["tta"] == "flip"
    rgb = frame(*NET, seed=8)
    torch.testing.assert_close(network_logits(twin, rgb), network_logits(pairs["torch"][1], rgb))
