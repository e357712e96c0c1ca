"""HD frames from a small network: upsample='boundary' against the exact path, the tensor operations the GPU
runs against OpenCV's on the CPU, odd frame sizes, and no work for outputs nobody asked for.

Realistic logits come from the shipped camvid_fast model (a 192x320 network input) on a synthetic street;
the tiny random model stands in where only shapes and agreement between paths matter.
"""

import cv2
import numpy as np
import pytest
import torch

from msseg_core.runtime import postprocess as pp
from msseg_core.runtime import segmenter as segmenter_module
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter

T1 = {"device": "cpu", "threads": 1}


def boundary_everywhere(seg):
    """The boundary kernels at every frame size (with OpenCV, small frames take the exact path)."""
    seg._boundary_min_work = 0.0
    return seg


@pytest.fixture(scope="module")
def fast():
    """The shipped fast model, once per upsampling mode and post-processing kernel set."""
    return {(up, k): boundary_everywhere(Segmenter.from_checkpoint("camvid_fast", backend="torch", upsample=up,
                                                                   post_kernels=k, **T1))
            for up in pp.UPSAMPLE_MODES for k in ("opencv", "torch")}


@pytest.fixture(scope="module")
def street():
    from msseg_core.synthetic import render_scene

    return render_scene(3, 240, 180)[0]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return {k: boundary_everywhere(Segmenter.from_checkpoint(tiny_checkpoint, backend="torch", post_kernels=k, **T1))
            for k in ("opencv", "torch")}


def enlarge(rgb, h, w):
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def near_label_changes(labels, radius):
    """Pixels within `radius` of a place where the labels change."""
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(labels, k) != cv2.erode(labels, k)


@pytest.mark.parametrize("size", [(360, 480), (720, 1280), (1080, 1920), (721, 1283)])
def test_boundary_labels_are_the_exact_labels_and_confidence_is_within_two_levels(fast, street, size):
    h, w = size
    exact, boundary = fast[("exact", "opencv")], fast[("boundary", "opencv")]
    net = exact.run_network(enlarge(street, h, w))
    want, got = exact.postprocess(net), boundary.postprocess(net)
    for key in OUTPUTS:
        assert got[key].shape == want[key].shape and got[key].dtype == np.uint8, key
    # Labels: the exact path's, but for float rounding, and never away from a label change.
    lab = want["labels"]
    differ = got["labels"] != lab
    assert differ.mean() <= 1e-4
    scale = int(np.ceil(max(h / net.logits.shape[2], w / net.logits.shape[3])))
    edges = near_label_changes(lab, scale + 1)
    assert not differ[~edges].any()
    # The bound means something: the network-scale argmax enlarged (no refinement) misses it by far.
    small = net.logits[0].argmax(0).numpy().astype(np.uint8)
    assert (cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST_EXACT) != lab).mean() > 10 * 1e-4
    # Every other output follows the labels this path produced.
    np.testing.assert_array_equal(got["color_mask"], boundary.palette[got["labels"]])
    road = [boundary.class_names.index(c) for c in boundary.road_classes]
    np.testing.assert_array_equal(got["road_mask"], np.where(np.isin(got["labels"], road), 255, 0))
    frame = enlarge(street, h, w).astype(np.float64)
    assert np.abs(got["overlay"] - np.round(0.5 * frame + 0.5 * got["color_mask"])).max() <= 1
    # Confidence: within 2 levels of the exact softmax almost everywhere, more so away from label changes.
    err = np.abs(got["confidence"].astype(int) - want["confidence"])
    assert np.median(err) == 0 and (err <= 2).mean() >= 0.99 and (err[~edges] <= 2).mean() >= 0.995
    assert err.max() <= 20


@pytest.mark.parametrize("upsample", pp.UPSAMPLE_MODES)
@pytest.mark.parametrize("size", [(360, 480), (721, 1283), (144, 1001)])
def test_tensor_path_gives_the_opencv_paths_outputs(fast, street, upsample, size):
    """The CPU device running the GPU's tensor code path (post_kernels='torch') against OpenCV on the
    same network output: boundary upsampling gives the same labels bit for bit. Confidence agrees but for
    rounding: OpenCV's exp and torch's differ in the last bits, so a probability that sits on a half level
    of 1/255 may round either way (overlay: rounding of the blend)."""
    cv, tensor = fast[(upsample, "opencv")], fast[(upsample, "torch")]
    assert cv.describe()["post_kernels"] == "opencv" and tensor.describe()["post_kernels"] == "torch"
    net = cv.run_network(enlarge(street, *size))
    a, b = cv.postprocess(net), tensor.postprocess(net)
    for key in OUTPUTS:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    assert np.abs(a["overlay"].astype(int) - b["overlay"]).max() <= 1
    if upsample == "boundary":
        for key in ("labels", "color_mask", "road_mask"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        diff = np.abs(a["confidence"].astype(int) - b["confidence"])
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.9999
    else:
        assert (a["labels"] == b["labels"]).mean() >= 0.999
        same = a["labels"] == b["labels"]
        assert np.abs(a["confidence"].astype(int) - b["confidence"])[same].max() <= 1


def test_tensor_path_is_what_runs_with_post_kernels_torch(fast, street, monkeypatch):
    rgb = enlarge(street, 300, 401)

    def refuse(*args, **kwargs):
        raise AssertionError("an OpenCV kernel ran on the tensor path")

    for name in ("nearest_image", "network_labels_planes", "palette_lookup", "mask_lookup", "argmax_planes"):
        monkeypatch.setattr(segmenter_module, name, refuse)
    monkeypatch.setattr(cv2, "resize", refuse)
    monkeypatch.setattr(cv2, "addWeighted", refuse)
    for upsample in pp.UPSAMPLE_MODES:
        out = fast[(upsample, "torch")].segment(rgb)
        assert set(out) == set(OUTPUTS)
    with pytest.raises(ValueError, match="post_kernels"):
        Segmenter.from_checkpoint("camvid_fast", backend="torch", post_kernels="numpy", **T1)


def test_batches_of_several_frames_agree_with_single_frames(fast, street):
    frames = [enlarge(street, 400, 600), enlarge(street[:, ::-1].copy(), 400, 600)]
    for kernels in ("opencv", "torch"):
        seg = fast[("boundary", kernels)]
        batch = seg.segment_batch(frames)
        for rgb, got in zip(frames, batch, strict=True):
            single = seg.segment(rgb)
            for key in OUTPUTS:
                np.testing.assert_array_equal(got[key], single[key], err_msg=f"{kernels} {key}")


ODD = [(1, 1), (1, 4097), (3, 4097), (37, 53), (33, 49), (32, 4097), (4097, 3), (101, 7), (2, 33001)]


@pytest.mark.parametrize("size", ODD, ids=["x".join(map(str, s)) for s in ODD])
def test_odd_frame_sizes_give_every_output_at_the_frame_size(tiny, size):
    """1 x 1, odd widths, 4097 wide (wider than the 32x48 network: upsampled along one side only, or
    shrunk along the other), wider than OpenCV's resize limit: the outputs are the frame's size, and both
    kernel sets agree."""
    rgb = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    outs = {k: seg.segment(rgb) for k, seg in tiny.items()}
    for k, out in outs.items():
        assert set(out) == set(OUTPUTS), k
        for key, value in out.items():
            assert value.shape[:2] == size and value.dtype == np.uint8, (k, key)
        assert out["labels"].max() < tiny[k].num_classes
    for key in ("labels", "color_mask", "road_mask"):
        np.testing.assert_array_equal(outs["opencv"][key], outs["torch"][key], err_msg=key)
    assert np.abs(outs["opencv"]["confidence"].astype(int) - outs["torch"]["confidence"]).max() <= 1
    probs = tiny["opencv"].probabilities(rgb)  # the exact path's logits
    assert (outs["opencv"]["labels"] == probs.argmax(0)).mean() >= 0.999


def test_bad_frames_are_refused_with_a_clear_error(tiny):
    seg = tiny["opencv"]
    for bad, match in ((np.zeros((0, 5, 3), np.uint8), "empty"), (np.zeros((4, 5, 3), np.float32), "uint8"),
                       (np.zeros((4, 5), np.uint8), "H x W x 3"), ([[0, 0, 0]], "numpy")):
        with pytest.raises((ValueError, TypeError), match=match):
            seg.segment(bad)


class Calls:
    """Records which post-processing steps ran (wrapping the functions the Segmenter calls)."""

    def __init__(self, monkeypatch, names):
        self.seen: list[str] = []
        for name in names:
            original = getattr(segmenter_module, name)
            monkeypatch.setattr(segmenter_module, name, self._wrap(name, original))

    def _wrap(self, name, fn):
        def call(*args, **kwargs):
            self.seen.append(name if name != "refine_boundaries" or not args[3] else "refine_boundaries+confidence")
            return fn(*args, **kwargs)
        return call


STEPS = ["refine_boundaries", "confidence_codes", "nearest_image", "palette_lookup", "mask_lookup",
         "upsample_nearest", "upsample_codes", "confidence_planes", "argmax_planes", "upsample_planes", "blend"]


@pytest.mark.parametrize("kernels", ["opencv", "torch"])
def test_outputs_nobody_asked_for_are_never_computed(fast, street, monkeypatch, kernels):
    rgb = enlarge(street, 360, 480)
    boundary = fast[("boundary", kernels)]
    cases = {
        ("labels",): {"opencv": {"refine_boundaries", "nearest_image"},
                      "torch": {"refine_boundaries", "upsample_nearest"}},
        ("confidence",): {"opencv": {"refine_boundaries+confidence", "confidence_codes"},
                          "torch": {"refine_boundaries+confidence", "confidence_codes", "upsample_codes"}},
        ("road_mask",): {"opencv": {"refine_boundaries", "nearest_image", "mask_lookup"},
                         "torch": {"refine_boundaries", "upsample_nearest"}},
        ("overlay",): {"opencv": {"refine_boundaries", "nearest_image", "palette_lookup"},
                       "torch": {"refine_boundaries", "upsample_nearest", "blend"}},
    }
    for outputs, expected in cases.items():
        calls = Calls(monkeypatch, STEPS)
        out = boundary.segment(rgb, outputs)
        assert set(out) == set(outputs)
        assert set(calls.seen) == expected[kernels], (outputs, calls.seen)
    # The exact path too: labels alone never compute the softmax.
    calls = Calls(monkeypatch, STEPS)
    fast[("exact", kernels)].segment(rgb, ["labels"])
    assert "confidence_planes" not in calls.seen and "confidence_codes" not in calls.seen


def test_opencv_takes_the_exact_path_where_it_is_the_cheaper(street, monkeypatch):
    """camvid_fast (11 classes, 192x320) at 360x480 is 31 network-size planes of class work: below
    BOUNDARY_MIN_WORK, so the exact kernels run (the same labels, the exact confidence); at 720x1280 the
    boundary kernels do. The tensor path (GPU) follows the same rule."""
    seen = []
    original = segmenter_module.refine_boundaries
    monkeypatch.setattr(segmenter_module, "refine_boundaries", lambda *a: seen.append(1) or original(*a))
    exact, default = (Segmenter.from_checkpoint("camvid_fast", backend="torch", upsample=u, **T1)
                      for u in pp.UPSAMPLE_MODES[::-1])
    net = default.run_network(enlarge(street, 360, 480))
    small = default.postprocess(net)
    assert not seen
    for key in OUTPUTS:
        np.testing.assert_array_equal(small[key], exact.postprocess(net)[key], err_msg=key)
    default.postprocess(default.run_network(enlarge(street, 720, 1280)))
    assert len(seen) == 1
    tensor = Segmenter.from_checkpoint("camvid_fast", backend="torch", post_kernels="torch", **T1)
    tensor.postprocess(net)
    assert len(seen) == 1
    tensor.postprocess(default.run_network(enlarge(street, 720, 1280)))
    assert len(seen) == 2


@pytest.mark.parametrize("seed", range(6))
def test_code_upsampling_is_opencvs_linear_exact_resize_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    size = (h + int(rng.integers(0, 300)), w + int(rng.integers(0, 300)))
    small = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
    got = pp.upsample_codes(torch.from_numpy(small), pp.cell_grid((h, w), size)).numpy()
    for i in range(2):
        want = cv2.resize(small[i], size[::-1], interpolation=cv2.INTER_LINEAR_EXACT)
        np.testing.assert_array_equal(got[i], want)


def test_confidence_code_round_trips_within_about_one_level():
    code = pp.ConfidenceCode(11)
    assert (np.diff(code.table.astype(int)) >= 0).all() and code.table[-1] == 255
    p = np.linspace(1 / 11, 0.9999, 5000)
    rest = torch.from_numpy((1 - p) / p)  # sum of the other classes' exp(l - l_max) when p is the maximum
    back = code.table[code.encode(rest.clone()).numpy()]
    assert np.abs(back.astype(int) - np.round(255 * p)).max() <= 2
