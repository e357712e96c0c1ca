"""Segmenter: the one inference path. Outputs are at input resolution and consistent with each other."""

import numpy as np
import pytest
import torch
from paths import REPO
from tiny_model import TINY_INPUT_SIZE

from msseg_core.runtime.postprocess import UPSAMPLE_MODES
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter, resolve_device


@pytest.fixture
def segmenter(tiny_checkpoint):
    return Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch")


def frame(h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_upsampling_modes_are_validated_and_described(tiny_checkpoint, segmenter):
    assert segmenter.upsample == "boundary" and segmenter.describe()["upsample"] == "boundary"
    with pytest.raises(ValueError, match="upsample"):
        Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", upsample="fast")


@pytest.mark.parametrize("shape", [(37, 53), (48, 64), (1, 1), (121, 89)])
def test_predict_returns_class_ids_at_input_resolution(segmenter, shape):
    rgb = frame(*shape)
    labels = segmenter.predict(rgb)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert labels.max() < segmenter.num_classes
    probs = segmenter.probabilities(rgb)
    assert probs.shape == (segmenter.num_classes, *shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_predict_batch_equals_predict_for_mixed_sizes(segmenter):
    images = [frame(40, 60, 1), frame(37, 53, 2), frame(40, 60, 3)]
    batch = segmenter.predict_batch(images)
    for im, labels in zip(images, batch, strict=True):
        np.testing.assert_array_equal(labels, segmenter.predict(im))


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
def test_segment_outputs_are_consistent(segmenter, upsample, monkeypatch):
    monkeypatch.setattr(segmenter, "upsample", upsample)
    monkeypatch.setattr(segmenter, "_boundary_min_work", 0.0)  # the boundary kernels even on this small frame
    rgb = frame(45, 70)
    out = segmenter.segment(rgb, OUTPUTS, overlay_alpha=0.25)
    labels = out["labels"]
    np.testing.assert_array_equal(labels, segmenter.predict(rgb))
    np.testing.assert_array_equal(out["color_mask"], segmenter.palette[labels])
    expected_overlay = np.round(0.75 * rgb + 0.25 * segmenter.palette[labels].astype(np.float64))
    assert np.abs(out["overlay"].astype(int) - expected_overlay).max() <= 1
    probs = segmenter.probabilities(rgb)
    err = np.abs(out["confidence"].astype(int) - np.round(probs.max(0) * 255))
    if upsample == "exact":
        assert err.max() <= 1
    else:  # confidence from the network's scale (postprocess.py): within 2 levels almost everywhere
        assert (err <= 2).mean() >= 0.99
    road_id = segmenter.class_names.index("Road")
    np.testing.assert_array_equal(out["road_mask"], np.where(labels == road_id, 255, 0))
    for key, value in out.items():
        assert value.shape[:2] == rgb.shape[:2] and value.dtype == np.uint8, key


def test_only_requested_outputs_are_computed(segmenter):
    out = segmenter.segment(frame(), ["road_mask"])
    assert set(out) == {"road_mask"}
    with pytest.raises(ValueError, match="unknown outputs"):
        segmenter.segment(frame(), ["labels", "depth"])


def test_road_classes_can_change_and_unknown_names_change_nothing(segmenter):
    rgb = frame()
    segmenter.set_road_classes(["Road", "Pavement"])
    labels = segmenter.predict(rgb)
    ids = [segmenter.class_names.index(c) for c in ("Road", "Pavement")]
    np.testing.assert_array_equal(segmenter.segment(rgb, ["road_mask"])["road_mask"],
                                  np.where(np.isin(labels, ids), 255, 0))
    with pytest.raises(ValueError, match="unknown road classes"):
        segmenter.set_road_classes(["Runway"])
    assert segmenter.road_classes == ["Road", "Pavement"]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
     np.zeros((0, 4, 3), np.uint8)],
)
def test_bad_images_are_rejected_clearly(segmenter, bad):
    with pytest.raises(ValueError):
        segmenter.predict(bad)


def test_network_runs_at_the_requested_input_size(tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", input_size=(32, 40), backend="torch")
    seen = []
    seg.model.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    labels = seg.predict(frame(90, 120))
    assert seen == [(32, 40)] and labels.shape == (90, 120)
    default = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch")
    assert default.input_size == TINY_INPUT_SIZE  # from the checkpoint's metadata


def test_device_and_precision_are_validated(tiny_checkpoint):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(ValueError, match="fp16"):
            Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", precision="int3")


def test_bf16_on_cpu_agrees_with_fp32(tiny_checkpoint):
    rgb = frame(48, 64)
    fp32 = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch").predict(rgb)
    bf16 = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", precision="bf16").predict(rgb)
    assert (fp32 == bf16).mean() > 0.8


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, run on the packaged model: what it promises comes back."""
    import re

    monkeypatch.setenv("MSSEG_CACHE_DIR", str(tmp_path))  # backend 'auto' exports ONNX there, not in ~/.cache
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "Segmenter" in b]
    assert len(blocks) == 1, "the README has one Python example of Segmenter"
    rgb = frame(72, 96, seed=5)
    scope = {"rgb": rgb}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    seg, labels = scope["seg"], scope["labels"]
    assert labels.shape == (72, 96) and labels.dtype == np.uint8 and labels.max() < seg.num_classes
    assert set(scope["out"]) == {"labels"}
    np.testing.assert_array_equal(scope["out"]["labels"], labels)
