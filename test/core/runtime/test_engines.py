"""Engines behind the Segmenter: OpenVINO and TensorRT, the verified engine cache, and how 'auto' chooses.

CPU only. TensorRT needs an NVIDIA GPU, so here it is tested as far as a CPU allows: its cache keys,
its errors, and that 'auto' never tries it without CUDA. Frames are synthetic street scenes
(msseg_core.synthetic): smooth, structured images, unlike noise, where every pixel is a near-tie.
"""

import logging
import sys

import numpy as np
import pytest
import torch

from msseg_core.checkpoint import load_checkpoint
from msseg_core.runtime.engines import factory as engines
from msseg_core.runtime.engines.cache import blob_path, load_or_build
from msseg_core.runtime.engines.torch_ort import EngineUnavailable
from msseg_core.runtime.segmenter import Segmenter
from msseg_core.synthetic import render_scene

T1 = {"device": "cpu", "threads": 1}
SIZE = (48, 64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", input_size=SIZE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_cache")


@pytest.fixture(scope="module")
def street():
    return [render_scene(seed, 96, 72)[0] for seed in range(3)]


# ------------------------------------------------------------------------------ engine cache


class Counter:
    def __init__(self, payload=b"engine-bytes"):
        self.payload, self.builds, self.loaded = payload, 0, []

    def build(self):
        self.builds += 1
        return self.payload

    def load(self, data):
        self.loaded.append(data)
        if data != self.payload:
            raise RuntimeError("not an engine")
        return ("engine", data)


def test_engine_cache_builds_once_then_loads_the_verified_file(tmp_path):
    c = Counter()
    key = {"engine": "x", "version": "1", "input_size": [48, 64]}
    engine, built = load_or_build(tmp_path, "m", key, c.build, c.load)
    assert built and c.builds == 1 and engine == ("engine", c.payload)
    engine, built = load_or_build(tmp_path, "m", key, c.build, c.load)
    assert not built and c.builds == 1 and engine == ("engine", c.payload)


@pytest.mark.parametrize("field,value", [("version", "2"), ("input_size", [96, 128]), ("checkpoint", "other")])
def test_engine_cache_key_change_means_a_new_engine(tmp_path, field, value):
    c = Counter()
    key = {"engine": "x", "version": "1", "input_size": [48, 64], "checkpoint": "abc"}
    load_or_build(tmp_path, "m", key, c.build, c.load)
    other = dict(key, **{field: value})
    assert blob_path(tmp_path, "m", other) != blob_path(tmp_path, "m", key)
    _, built = load_or_build(tmp_path, "m", other, c.build, c.load)
    assert built and c.builds == 2


def test_engine_cache_never_hands_a_corrupt_or_stale_file_to_the_engine(tmp_path):
    c = Counter()
    key = {"engine": "x", "version": "1"}
    load_or_build(tmp_path, "m", key, c.build, c.load)
    path = blob_path(tmp_path, "m", key)
    path.write_bytes(b"engine-bytez")  # same size, one byte flipped: only the checksum notices
    c.loaded.clear()
    _, built = load_or_build(tmp_path, "m", key, c.build, c.load)
    assert built and c.loaded == [c.payload]  # the corrupt bytes were never deserialised
    assert path.read_bytes() == c.payload  # and the file was replaced
    # A sidecar written for another key (e.g. copied from another machine) is stale: rebuilt too.
    sidecar = path.with_suffix(".json")
    sidecar.write_text(sidecar.read_text().replace('"version": "1"', '"version": "0"'))
    _, built = load_or_build(tmp_path, "m", key, c.build, c.load)
    assert built and c.builds == 3
    path.unlink()  # a missing engine file with its sidecar left behind
    _, built = load_or_build(tmp_path, "m", key, c.build, c.load)
    assert built and c.builds == 4


def test_engine_cache_rebuilds_a_verified_file_the_engine_refuses(tmp_path, caplog):
    key = {"engine": "x"}
    load_or_build(tmp_path, "m", key, lambda: b"old-format", lambda d: d)
    c = Counter()
    with caplog.at_level(logging.WARNING):
        _, built = load_or_build(tmp_path, "m", key, c.build, c.load)
    assert built and "failed to load" in caplog.text


# ------------------------------------------------------------------------------------ OpenVINO


def _agreement(a, b):
    return float(np.mean([(x == y).mean() for x, y in zip(a, b, strict=True)]))


def test_fp32_engines_agree_with_pytorch_on_street_frames(ckpt, cache, street):
    pytest.importorskip("openvino")
    ref = Segmenter.from_checkpoint(ckpt, backend="torch", fuse=False, **T1)
    ref_labels = [ref.predict(f) for f in street]
    ref_probs = ref.probabilities(street[0])
    for backend in ("onnxruntime", "openvino"):
        seg = Segmenter.from_checkpoint(ckpt, backend=backend, cache_dir=cache, **T1)
        assert seg.backend == backend
        assert _agreement([seg.predict(f) for f in street], ref_labels) >= 0.99, backend
        np.testing.assert_allclose(seg.probabilities(street[0]), ref_probs, atol=1e-4)


def test_openvino_engine_is_cached_and_rebuilt_when_stale_or_corrupt(ckpt, cache, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import openvino

    from msseg_core.runtime.engines import openvino_engine as openvino_backend

    first = Segmenter.from_checkpoint(ckpt, backend="openvino", cache_dir=tmp_path, **T1)
    assert first.describe()["engine_cache"] == "built"
    frame = render_scene(5, 64, 48)[0]
    labels = first.predict(frame)
    again = Segmenter.from_checkpoint(ckpt, backend="openvino", cache_dir=tmp_path, **T1)
    assert again.describe()["engine_cache"] == "loaded"
    np.testing.assert_array_equal(again.predict(frame), labels)
    # Corrupt the cached blob: it is rebuilt, not loaded, and the results are unchanged.
    blob = blob_path(tmp_path / "openvino", again.onnx_path.stem, again.net.key)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    fixed = Segmenter.from_checkpoint(ckpt, backend="openvino", cache_dir=tmp_path, **T1)
    assert fixed.describe()["engine_cache"] == "built"
    np.testing.assert_array_equal(fixed.predict(frame), labels)
    # Another OpenVINO version, input size or set of weights: a new engine, never the old one.
    monkeypatch.setattr(openvino, "get_version", lambda: "0.0.0-other")
    assert Segmenter.from_checkpoint(ckpt, backend="openvino", cache_dir=tmp_path, **T1).net.built
    monkeypatch.undo()
    assert Segmenter.from_checkpoint(ckpt, backend="openvino", cache_dir=tmp_path, input_size=(32, 48),
                                     **T1).net.built
    model, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    seg = Segmenter(model, meta, backend="openvino", cache_dir=tmp_path, **T1)
    assert seg.net.built and seg.net.key["checkpoint"] != again.net.key["checkpoint"]
    assert openvino_backend.compile_config("CPU", 1, "fp32")["INFERENCE_PRECISION_HINT"] == "f32"
    # streams: one compiled stream per frame in flight, `threads` each; a new engine, never the 1-stream one.
    two = openvino_backend.compile_config("CPU", 1, "fp32", streams=2)
    assert two["NUM_STREAMS"] == 2 and two["INFERENCE_NUM_THREADS"] == 2
    streamed = Segmenter(model, meta, backend="openvino", cache_dir=tmp_path, streams=2, **T1)
    assert streamed.net.built and streamed.net.key["config"]["NUM_STREAMS"] == 2


def test_missing_engines_give_one_line_errors(ckpt, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(EngineUnavailable, match=r"pip install openvino") as info:
        Segmenter.from_checkpoint(ckpt, backend="openvino", cache_dir=cache, **T1)
    assert "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from msseg_core.runtime.engines.tensorrt_engine import TensorRTEngine

    with pytest.raises(EngineUnavailable, match=r"pip install tensorrt-cu12"):
        TensorRTEngine(cache / "x.onnx", torch.device("cuda"))
    # TensorRT is for CUDA devices: asked for on the CPU, the error says what to use instead.
    with pytest.raises(ValueError, match="backend tensorrt does not run on cpu"):
        Segmenter.from_checkpoint(ckpt, backend="tensorrt", cache_dir=cache, **T1)
    with pytest.raises(ValueError, match="INT8 runs in onnxruntime or openvino"):
        Segmenter.from_checkpoint(ckpt, backend="torch", precision="int8", cache_dir=cache, **T1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_tensorrt_without_a_gpu_says_so(monkeypatch, tmp_path):
    import types

    from msseg_core.runtime.engines import tensorrt_engine as tensorrt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    with pytest.raises(EngineUnavailable, match="needs a CUDA GPU, and none is available"):
        tensorrt_backend.TensorRTEngine(tmp_path / "m.onnx", torch.device("cuda"))
    with pytest.raises(EngineUnavailable, match="needs a CUDA device, got cpu"):
        tensorrt_backend.TensorRTEngine(tmp_path / "m.onnx", torch.device("cpu"))
    # 'auto' on the CPU never considers TensorRT, even where the package is installed.
    monkeypatch.setattr(engines, "engine_versions", lambda: {"torch": "x", "onnxruntime": "x", "openvino": "x",
                                                             "tensorrt": "11.4.0"})
    factory = _factory(None, device="cpu")
    assert "tensorrt" not in factory.candidates()


def test_tensorrt_engine_key_names_the_gpu_precision_size_and_version(tmp_path):
    from msseg_core.runtime.engines.tensorrt_engine import cache_key

    base = dict(onnx_sha256="a" * 64, input_size=(512, 768), precision="fp16", version="11.4.0",
                gpu_name="NVIDIA H100", capability=(9, 0), source_digest="ckpt")
    path = blob_path(tmp_path, "m", cache_key(**base))
    for field, value in [("onnx_sha256", "b" * 64), ("input_size", (720, 960)), ("precision", "int8"),
                         ("version", "11.5.0"), ("gpu_name", "NVIDIA L4"), ("capability", (8, 9)),
                         ("source_digest", "other")]:
        assert blob_path(tmp_path, "m", cache_key(**dict(base, **{field: value}))) != path, field


def test_tensorrt_cuda_graph_capture_failure_falls_back_to_direct_enqueue(caplog):
    from msseg_core.runtime.engines.tensorrt_engine import TensorRTEngine

    net = object.__new__(TensorRTEngine)  # the capture step alone: no GPU, no engine needed
    net._stream = None
    net.context = None
    with caplog.at_level(logging.WARNING):
        assert net._capture() is False
    assert net._graph is None and "enqueueing directly" in caplog.text


# ------------------------------------------------------------------------------------------ auto


def _factory(model, device="cpu", precision="fp32", cache_dir=None, onnx_path=None):
    from tiny_model import TINY_MODEL  # noqa: F401 - the meta below matches the tiny checkpoints

    from msseg_core.checkpoint import CheckpointMeta
    from msseg_core.classes import CAMVID

    meta = CheckpointMeta(model="mssanet", model_args={}, class_names=list(CAMVID.names),
                          palette=[list(c) for c in CAMVID.palette], road_classes=list(CAMVID.road),
                          input_size=list(SIZE))
    return engines.EngineFactory(engines.EngineRequest(
        model=model, meta=meta, device=torch.device(device), precision=precision, input_size=SIZE, threads=1,
        torch_options={"channels_last": None, "fuse": True, "compile": False, "cuda_graphs": False},
        cache_dir=cache_dir, onnx_path=onnx_path))


def test_choose_takes_the_fastest_agreeing_engine_with_a_margin_over_pytorch():
    agree = {"torch": 1.0, "torch_nchw": 1.0, "onnxruntime": 1.0, "openvino": 1.0}

    def pick(torch_ms, nchw_ms, ort_ms, ov_ms, agreement=agree, precision="fp32"):
        times = {"torch": torch_ms, "torch_nchw": nchw_ms, "onnxruntime": ort_ms, "openvino": ov_ms}
        return engines.choose(times, agreement, precision)

    assert pick(10, 12, 5, 4) == "openvino"
    assert pick(10, 12, 9.5, 9.6) == "torch"  # 5% faster than PyTorch is not enough to switch engines
    assert pick(10, 6, 5.5, 9) == "torch_nchw"
    # The fastest engine disagrees with PyTorch: never chosen.
    assert pick(10, 12, 8, 1, dict(agree, openvino=0.8)) == "onnxruntime"
    # INT8 (no PyTorch): ONNX Runtime is the baseline; its own agreement bar is lower, but not absent.
    int8 = {"onnxruntime": 10, "openvino": 8}
    assert engines.choose(int8, {"onnxruntime": 0.95, "openvino": 0.93}, "int8") == "openvino"
    assert engines.choose(int8, {"onnxruntime": 0.95, "openvino": 0.5}, "int8") == "onnxruntime"
    with pytest.raises(RuntimeError, match="no engine agrees"):
        engines.choose({"onnxruntime": 10}, {"onnxruntime": 0.5}, "int8")


def test_auto_skips_engines_that_are_not_installed(monkeypatch):
    monkeypatch.setattr(engines, "engine_versions", lambda: {"torch": "x", "onnxruntime": "x", "openvino": None,
                                                             "tensorrt": None})
    assert _factory(torch.nn.Identity()).candidates() == ["torch", "onnxruntime"]
    assert _factory(torch.nn.Identity(), precision="bf16").candidates() == ["torch"]
    assert _factory(None, precision="int8").candidates() == ["onnxruntime"]


def test_auto_never_picks_an_engine_that_disagrees(ckpt, cache, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from msseg_core.runtime.engines.openvino_engine import OpenVinoEngine

    def fake_race(times):
        def race(nets, x, budget):
            return {k: times.get(k, 10.0) for k in nets}
        return race

    monkeypatch.setattr(engines, "_race", fake_race({"torch": 1.0, "torch_nchw": 1.0, "onnxruntime": 0.8,
                                                     "openvino": 0.1}))
    seg = Segmenter.from_checkpoint(ckpt, cache_dir=tmp_path / "ok", **T1)
    assert seg.backend == "openvino"  # the fastest, and it agrees
    auto = seg.describe()["auto"]
    assert auto["choice"] == "openvino" and auto["timings_ms"]["openvino"] == 100.0
    assert auto["agreement"]["openvino"] >= 0.99 and not auto["cached"]
    # Now OpenVINO's logits are scrambled (a broken engine): still the fastest, never chosen.
    real_call = OpenVinoEngine.__call__
    monkeypatch.setattr(OpenVinoEngine, "__call__", lambda self, x: real_call(self, x).flip(1))
    seg = Segmenter.from_checkpoint(ckpt, cache_dir=tmp_path / "broken", **T1)
    assert seg.backend == "onnxruntime"
    assert seg.describe()["auto"]["agreement"]["openvino"] < 0.99


def test_auto_decision_is_cached_and_shown_by_describe(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "engine_versions", lambda: {"torch": torch.__version__, "onnxruntime": "x",
                                                             "openvino": None, "tensorrt": None})
    monkeypatch.setattr(engines, "_race", lambda nets, x, b: {k: {"onnxruntime": 0.5}.get(k, 1.0) for k in nets})
    first = Segmenter.from_checkpoint(ckpt, cache_dir=tmp_path, **T1)
    assert first.backend == "onnxruntime" and first.describe()["auto_timings_ms"]["onnxruntime"] == 500.0

    def no_race(*args):
        raise AssertionError("the cached decision should have been used")

    monkeypatch.setattr(engines, "_race", no_race)
    again = Segmenter.from_checkpoint(ckpt, cache_dir=tmp_path, **T1)
    info = again.describe()["auto"]
    assert again.backend == "onnxruntime" and info["cached"] and info["timings_ms"]["onnxruntime"] == 500.0
    assert set(info["candidates"]) == {"torch", "onnxruntime"}
    # A CPU of the same model name but other ISA extensions (one without VNNI, say) races the engines again.
    monkeypatch.setattr(engines, "cpu_flags", lambda: ["not_this_cpu"])
    monkeypatch.setattr(engines, "_race", lambda nets, x, b: {k: {"torch": 0.5}.get(k, 1.0) for k in nets})
    other = Segmenter.from_checkpoint(ckpt, cache_dir=tmp_path, **T1)
    assert other.backend == "torch" and not other.describe()["auto"]["cached"]


def test_openvino_blobs_are_keyed_by_the_cpus_isa_extensions(monkeypatch):
    """Same model name, other ISA flags: a compiled blob from one is not loaded on the other."""
    from msseg_core.runtime.engines import openvino_engine

    key = openvino_engine.cache_key("sha", (48, 64), "fp32", "CPU", {}, "v", cpu="AMD EPYC")
    monkeypatch.setattr(openvino_engine, "cpu_flags", lambda: ["not_this_cpu"])
    other = openvino_engine.cache_key("sha", (48, 64), "fp32", "CPU", {}, "v", cpu="AMD EPYC")
    assert other != key and other["cpu_flags"] == ["not_this_cpu"]
