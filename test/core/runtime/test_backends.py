"""The fast inference path agrees with a plain reference implementation, on every backend.

The reference is written here, independently of msseg_core: cv2 / PIL resize and numpy normalisation,
the unmodified fp32 NCHW network, bilinear upsampling of the logits, argmax, softmax. CPU only; the
CUDA-only paths (pinned upload, graphs) share every tensor operation tested here.
"""

import logging
import queue
import threading

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from msseg_core.checkpoint import load_checkpoint
from msseg_core.runtime import segmenter as inference
from msseg_core.runtime.engines import factory as engines
from msseg_core.runtime.engines.torch_ort import TorchEngine, fold_batchnorm, ort_providers
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter

# One intra-op thread: on a shared, oversubscribed CI machine OpenMP barriers make 2-thread PyTorch
# calls on tiny tensors 100x slower; the numerics do not depend on it.
T1 = {"device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One export cache for the module: each (model, size) is exported once."""
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The shared tiny checkpoint at a 48x64 network input, built once for the module."""
    from tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", input_size=(48, 64))


@pytest.fixture(scope="module")
def segmenters(ckpt, onnx_cache):
    return {b: Segmenter.from_checkpoint(ckpt, backend=b, cache_dir=onnx_cache, **T1)
            for b in ("torch", "onnxruntime")}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def frame(h, w, seed=0):
    """Smooth-ish frames: random noise makes every pixel a near-tie between classes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(img.astype(int) + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)


def reference_resize(rgb, size):
    """Bilinear with half-pixel centres: cv2 when enlarging, PIL's antialiased filter when shrinking."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    if rgb.shape[0] > h or rgb.shape[1] > w:
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def reference_input(rgb, size, meta):
    x = reference_resize(rgb, size).astype(np.float32) / 255.0
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def reference_segment(model, meta, rgb, size, alpha=0.5):
    with torch.no_grad():
        logits = model.eval()(reference_input(rgb, size, meta))
    logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
    probs = torch.softmax(logits, 0).numpy()
    return probs, probs.argmax(0)


SHAPES = [(48, 64), (37, 53), (121, 89), (30, 100)]  # same, enlarge, shrink, mixed


@pytest.mark.parametrize("shape", SHAPES)
def test_device_preprocessing_matches_cv2_and_numpy(segmenters, shape):
    seg = segmenters["torch"]
    seen = []
    hook = seg.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    rgb = frame(*shape, seed=1)
    try:
        seg.predict(rgb)
    finally:
        hook.remove()
    ref = reference_input(rgb, seg.input_size, seg.meta)
    got = seen[0]
    assert got.shape == ref.shape and got.dtype == torch.float32
    lsb = 1.0 / (255.0 * min(seg.meta.std))  # one uint8 step after normalisation
    assert (got - ref).abs().max().item() <= 1.01 * lsb


# (backend, post-processing): on the CPU, OpenCV kernels on class planes; the PyTorch tensor ops are
# what CUDA runs, so they are checked here on CPU tensors too.
PATHS = [("torch", "cv2"), ("onnxruntime", "cv2"), ("onnxruntime", "torch")]


@pytest.mark.parametrize("upsample", ["boundary", "exact"])
@pytest.mark.parametrize("path", PATHS, ids=["-".join(p) for p in PATHS])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_output_matches_the_reference_path(ckpt, segmenters, path, shape, upsample, monkeypatch):
    backend, post = path
    model, meta = load_checkpoint(ckpt)
    seg = segmenters[backend]
    assert seg.backend == backend
    monkeypatch.setattr(seg, "_cv2_post", post == "cv2")
    monkeypatch.setattr(seg, "upsample", upsample)
    monkeypatch.setattr(seg, "_boundary_min_work", 0.0)  # the boundary kernels even on these small frames
    rgb = frame(*shape, seed=2)
    before = rgb.copy()
    out = seg.segment(rgb, OUTPUTS, overlay_alpha=0.3)
    np.testing.assert_array_equal(rgb, before)  # the frame is read in place, never written
    probs, labels = reference_segment(model, meta, rgb, seg.input_size)
    assert (out["labels"] == labels).mean() >= 0.99
    for key, value in out.items():
        assert value.dtype == np.uint8 and value.shape[:2] == shape, key
    # Every output is consistent with the labels this path produced.
    lab = out["labels"]
    np.testing.assert_array_equal(out["color_mask"], seg.palette[lab])
    expected = np.round(0.7 * rgb + 0.3 * seg.palette[lab].astype(np.float64))
    assert np.abs(out["overlay"].astype(int) - expected).max() <= 1
    road = [seg.class_names.index(c) for c in seg.road_classes]
    np.testing.assert_array_equal(out["road_mask"], np.where(np.isin(lab, road), 255, 0))
    same = lab == labels
    err = np.abs(out["confidence"].astype(int) - np.round(probs.max(0) * 255))[same]
    if upsample == "exact":
        assert err.max() <= 2
    else:  # confidence from the network's scale (postprocess.py): within 2 levels almost everywhere
        assert (err <= 2).mean() >= 0.99


def test_cpu_and_tensor_post_processing_agree_on_batches(segmenters, monkeypatch):
    seg = segmenters["onnxruntime"]
    images = [frame(50, 70, 10), frame(50, 70, 11), frame(48, 64, 12)]
    fast = seg.segment_batch(images, OUTPUTS, overlay_alpha=0.6)
    monkeypatch.setattr(seg, "_cv2_post", False)
    tensor = seg.segment_batch(images, OUTPUTS, overlay_alpha=0.6)
    for a, b in zip(fast, tensor, strict=True):
        assert (a["labels"] == b["labels"]).mean() >= 0.999
        same = a["labels"] == b["labels"]
        for key in OUTPUTS:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
            assert np.abs(a[key].astype(int) - b[key])[same].max() <= 1, key


def test_onnxruntime_and_torch_backends_give_the_same_labels(segmenters):
    a, b = segmenters["torch"], segmenters["onnxruntime"]
    images = [frame(48, 64, 3), frame(90, 120, 4), frame(48, 64, 5)]
    for la, lb in zip(a.predict_batch(images), b.predict_batch(images), strict=True):
        assert (la == lb).mean() >= 0.999
    np.testing.assert_allclose(a.probabilities(images[1]), b.probabilities(images[1]), atol=1e-4)


@pytest.mark.parametrize("path", PATHS, ids=["-".join(p) for p in PATHS])
def test_run_network_and_postprocess_in_two_threads_give_segments_outputs(segmenters, path, monkeypatch):
    """The node's pipeline: the network runs on frame N+1 while frame N is post-processed in another
    thread. ONNX Runtime writes every result into one reused buffer, so this fails unless
    run_network's result owns its logits."""
    seg = segmenters[path[0]]
    monkeypatch.setattr(seg, "_cv2_post", path[1] == "cv2")
    images = [frame(60, 80, 20 + i) for i in range(6)] + [frame(*seg.input_size, seed=30)]
    expected = [seg.segment(im, OUTPUTS, overlay_alpha=0.4) for im in images]
    handoff: queue.Queue = queue.Queue(maxsize=1)
    got: list[dict] = []
    post = threading.Thread(target=lambda: got.extend(seg.postprocess(handoff.get(), OUTPUTS, overlay_alpha=0.4)
                                                      for _ in images))
    post.start()
    for im in images:
        handoff.put(seg.run_network(im))
    post.join(timeout=60)
    assert len(got) == len(images)
    for want, have in zip(expected, got, strict=True):
        for key in OUTPUTS:
            np.testing.assert_array_equal(have[key], want[key], err_msg=key)
    # A result outlives later network calls and can be post-processed more than once (a frame at the
    # network's own size: no upsampling, the logits are used directly).
    held = seg.run_network(images[-1])
    for im in images[:3]:
        seg.run_network(im)
    for _ in range(2):
        again = seg.postprocess(held, OUTPUTS, overlay_alpha=0.4)
        for key in OUTPUTS:
            np.testing.assert_array_equal(again[key], expected[-1][key], err_msg=key)


@pytest.mark.parametrize("path", PATHS, ids=["-".join(p) for p in PATHS])
def test_outputs_are_fresh_arrays_not_reused_buffers(segmenters, path, monkeypatch):
    seg = segmenters[path[0]]
    monkeypatch.setattr(seg, "_cv2_post", path[1] == "cv2")
    first = seg.segment(frame(60, 80, 6))
    kept = {k: v.copy() for k, v in first.items()}
    seg.segment(frame(60, 80, 7))
    for key in OUTPUTS:
        np.testing.assert_array_equal(first[key], kept[key])
    logits = seg.logits_from_tensor(torch.from_numpy(frame(48, 64, 8)[None]))
    kept_logits = logits.clone()
    seg.logits_from_tensor(torch.from_numpy(frame(48, 64, 9)[None]))
    assert torch.equal(logits, kept_logits)


def test_threads_leave_the_process_pool_to_the_program(ckpt):
    """A library must not change process-wide state: Segmenter leaves PyTorch's pool as the program set it
    (and says what it runs with); the programs set it once with configure_process."""
    from msseg_core.cli.common import configure_process

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seg = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch", threads=1, fuse=False)
        assert torch.get_num_threads() == 2 and seg.describe()["threads"] == 2
        assert configure_process(1) == 1 and torch.get_num_threads() == 1 and seg.describe()["threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch", threads=-1)
    with pytest.raises(ValueError, match="backend"):
        Segmenter.from_checkpoint(ckpt, device="cpu", backend="tensorflow")


def test_auto_picks_a_faster_engine_only_when_measurably_faster_and_caches_it(ckpt, segmenters, tmp_path,
                                                                             monkeypatch):
    """The timing rule (engines.choose) through the real Segmenter: every candidate is built and checked."""
    def fake_race(times):
        def race(nets, x, budget):
            return {k: times.get(k, 10.0) for k in nets}
        return race

    onnx_path = segmenters["onnxruntime"].onnx_path  # exported once for the module
    others = {"openvino": 10.0}  # OpenVINO, where installed, is raced too: slow here

    def auto(cache):
        return Segmenter.from_checkpoint(ckpt, onnx_path=onnx_path, cache_dir=tmp_path / cache, **T1)

    monkeypatch.setattr(engines, "_race", fake_race({"torch": 1.0, "onnxruntime": 0.5, **others}))
    seg = auto("a")
    assert seg.backend == "onnxruntime"
    timings = seg.backend_timings
    assert {k: timings[k] for k in ("torch", "torch_nchw", "onnxruntime")} == {"torch": 1000.0, "torch_nchw": 10000.0,
                                                                               "onnxruntime": 500.0}
    monkeypatch.setattr(engines, "_race", fake_race({"torch": 1.0, "onnxruntime": 0.95, **others}))
    seg = auto("b")
    assert seg.backend == "torch" and seg.describe()["channels_last"] is True
    # PyTorch's memory layout is raced too: NCHW wins here, and ONNX Runtime is not 10% faster than it.
    monkeypatch.setattr(engines, "_race", fake_race({"torch": 1.0, "torch_nchw": 0.5, "onnxruntime": 0.46, **others}))
    seg = auto("c")
    assert seg.backend == "torch" and seg.describe()["channels_last"] is False

    def no_race(*args):
        raise AssertionError("the cached decision should have been used")

    monkeypatch.setattr(engines, "_race", no_race)
    assert auto("a").backend == "onnxruntime"
    # bf16 is PyTorch-only: auto does not even consider ONNX Runtime.
    assert Segmenter.from_checkpoint(ckpt, precision="bf16", **T1).backend == "torch"


def test_bf16_is_rejected_for_onnxruntime(ckpt, onnx_cache):
    with pytest.raises(ValueError, match="bf16"):
        Segmenter.from_checkpoint(ckpt, precision="bf16", backend="onnxruntime", cache_dir=onnx_cache, **T1)


def test_batchnorm_folding_is_exact_and_skips_shared_convs():
    torch.manual_seed(0)

    class Shared(nn.Module):  # the conv's output feeds the BN and the sum: folding would be wrong
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.ConvTranspose2d(4, 2, 2, stride=2), nn.BatchNorm2d(2))
    x = torch.randn(2, 3, 10, 12)
    for net, expected in ((seq, 2), (Shared(), 0)):
        for m in net.modules():  # non-trivial statistics, as after training
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 2)
        net.eval()
        ref = net(x)
        import copy

        folded, n = fold_batchnorm(copy.deepcopy(net))
        assert n == expected
        torch.testing.assert_close(folded.eval()(x), ref, atol=1e-5, rtol=1e-4)


def test_torch_backend_folds_real_models_and_ignores_cuda_graphs_on_cpu(ckpt, caplog):
    torch.set_num_threads(1)
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    with caplog.at_level(logging.WARNING):
        net = TorchEngine(model, torch.device("cpu"), input_size=(48, 64), cuda_graphs=True)
    assert net.folded > 0 and not net.cuda_graphs and "cuda_graphs" in caplog.text
    torch.testing.assert_close(net(x), ref, atol=1e-4, rtol=1e-4)


def test_ort_providers_prefer_tensorrt_then_cuda_on_the_right_device():
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = ort_providers(torch.device("cuda:1"), "fp16", "/tmp/trt", available=every)
    assert [p[0] if isinstance(p, tuple) else p for p in chosen] == every
    assert chosen[0][1]["device_id"] == 1 and chosen[0][1]["trt_fp16_enable"] is True
    assert chosen[1][1]["device_id"] == 1
    assert ort_providers(torch.device("cpu"), available=every) == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        ort_providers(torch.device("cuda"), available=["CPUExecutionProvider"])


def test_describe_and_empty_output_request(segmenters):
    for name, seg in segmenters.items():
        info = seg.describe()
        assert info["backend"] == name and info["device"] == "cpu" and info["input_size"] == [48, 64]
        assert seg.segment(frame(20, 30), []) == {}
    assert segmenters["onnxruntime"].describe()["providers"] == ["CPUExecutionProvider"]
    assert segmenters["torch"].describe()["channels_last"] is True


def test_packed_download_returns_fresh_arrays():
    """The CUDA download path (one packed copy through a reused staging buffer), on CPU tensors."""
    result = {"labels": torch.arange(12, dtype=torch.uint8).view(1, 3, 4),
              "color_mask": torch.arange(36, dtype=torch.uint8).view(1, 3, 4, 3)}
    staging = torch.empty(48, dtype=torch.uint8)
    host = inference.download_packed(result, staging)
    for key, value in result.items():
        np.testing.assert_array_equal(host[key], value.numpy())
    staging.zero_()  # the next frame reuses the buffer: earlier results must not change
    np.testing.assert_array_equal(host["labels"], result["labels"].numpy())
