"""msseg-quantize: one INT8 QDQ file per checkpoint, verified before use, run by ONNX Runtime and OpenVINO.

A tiny random network calibrated on a fake CamVid split: accuracy is not the point here (the real
model's INT8 mIoU is judged on CamVid val in BENCHMARKS.md); the point is that the file is found,
trusted only for its own weights, runs in every CPU engine, and stays close to fp32.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from msseg_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from msseg_core.cli import quantize as quantize_cli
from msseg_core.deploy import int8 as quantize
from msseg_core.runtime import artifacts
from msseg_core.runtime.artifacts import model_digest
from msseg_core.runtime.segmenter import Segmenter
from msseg_core.synthetic import render_scene

T1 = {"device": "cpu", "threads": 1}
SIZE = (48, 64)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from fake_datasets import write_fake_camvid

    root = tmp_path_factory.mktemp("camvid")
    write_fake_camvid(root, "train", n=6, size=SIZE)
    write_fake_camvid(root, "val", n=3, size=SIZE)
    return root


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, data_root):
    """A tiny checkpoint with its INT8 model beside it, built by the CLI (with the val comparison)."""
    from tiny_model import write_tiny_checkpoint

    folder = tmp_path_factory.mktemp("q")
    ckpt = write_tiny_checkpoint(folder / "tiny.safetensors", input_size=SIZE)
    report = folder / "report.json"
    status = quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--split", "train",
                            "--frames", "5", "--eval-split", "val", "--max-drop", "100", "--threads", "1",
                            "--json", str(report)])
    assert status == 0
    return ckpt, json.loads(report.read_text())


@pytest.fixture(scope="module")
def street():
    return [render_scene(seed, 96, 72)[0] for seed in range(3)]


def test_the_int8_model_is_written_beside_the_checkpoint_and_describes_itself(quantized):
    ckpt, report = quantized
    path = ckpt.with_name("tiny.int8.onnx")
    assert path.is_file() and report["int8_model"] == str(path)
    props = artifacts.int8_props(path)
    model, meta = load_checkpoint(ckpt)
    assert json.loads(props["precision"]) == "int8"
    assert json.loads(props["source_digest"]) == model_digest(model, meta)
    calib = json.loads(props["calibration"])
    assert calib["frames"] == 5 and calib["split"] == "train" and calib["method"] == "onnxruntime"
    assert json.loads(props["class_names"]) == meta.class_names and json.loads(props["input_size"]) == list(SIZE)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The comparison on the val split covers fp32 and INT8 in every installed CPU engine, per class.
    assert "onnxruntime fp32" in report["results"] and "onnxruntime int8" in report["results"]
    for row in report["results"].values():
        assert set(row["per_class_iou"]) == set(meta.class_names) and 0 <= row["miou"] <= 1


def test_int8_runs_in_every_cpu_engine_close_to_fp32(quantized, street, tmp_path):
    ckpt, _ = quantized
    fp32 = Segmenter.from_checkpoint(ckpt, backend="torch", fuse=False, **T1)
    ref_labels = [fp32.predict(f) for f in street]
    ref_probs = fp32.probabilities(street[0])
    engines = ["onnxruntime"] + (["openvino"] if _installed("openvino") else [])
    probs = {}
    for engine in engines:
        seg = Segmenter.from_checkpoint(ckpt, backend=engine, precision="int8", cache_dir=tmp_path, **T1)
        assert seg.backend == engine and seg.precision == "int8" and seg.onnx_path.name == "tiny.int8.onnx"
        # A random network is unsure everywhere (near-ties), so labels move more than a trained one's;
        # its probabilities show that the quantised network computes the same function.
        agreement = np.mean([(seg.predict(f) == b).mean() for f, b in zip(street, ref_labels, strict=True)])
        assert agreement >= 0.9, (engine, agreement)
        probs[engine] = seg.probabilities(street[0])
        assert np.abs(probs[engine] - ref_probs).mean() < 0.01, engine
    if "openvino" in probs:  # one file, two engines, the same quantised network
        assert np.abs(probs["onnxruntime"] - probs["openvino"]).mean() < 0.01


def _installed(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def test_a_bare_int8_file_runs_at_int8(quantized, tmp_path):
    ckpt, _ = quantized
    seg = Segmenter.from_checkpoint(ckpt.with_name("tiny.int8.onnx"), backend="onnxruntime", cache_dir=tmp_path, **T1)
    assert seg.precision == "int8" and seg.model is None
    with pytest.raises(ValueError, match="INT8 model"):
        Segmenter.from_onnx(ckpt.with_name("tiny.int8.onnx"), precision="bf16", **T1)


def test_missing_or_stale_int8_model_is_refused_with_the_command_that_builds_it(quantized, tmp_path):
    ckpt, _ = quantized
    other = tmp_path / "mine.safetensors"
    shutil.copy(ckpt, other)
    with pytest.raises(CheckpointError) as info:
        Segmenter.from_checkpoint(other, precision="int8", **T1)
    message = str(info.value)
    assert "\n" not in message and f"msseg-quantize --checkpoint {other}" in message
    # Retrained weights under the same name: the old INT8 file is stale and never used.
    shutil.copy(ckpt.with_name("tiny.int8.onnx"), tmp_path / "mine.int8.onnx")
    model, meta = load_checkpoint(other)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    save_checkpoint(other, model, meta)
    with pytest.raises(CheckpointError, match=r"calibrated for other weights .* \(stale\).*msseg-quantize"):
        Segmenter.from_checkpoint(other, precision="int8", **T1)
    # On a GPU machine INT8 means the TensorRT file, built with --for tensorrt.
    assert artifacts.build_command("camvid", "tensorrt").endswith("--split train --for tensorrt")
    assert artifacts.int8_model_path(other, "tensorrt").name == "mine.int8-tensorrt.onnx"


def test_keep_fp32_leaves_the_named_layers_unquantised(quantized, data_root, tmp_path):
    ckpt, _ = quantized
    out = tmp_path / "keep.onnx"
    assert quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--frames", "3",
                          "--out", str(out), "--keep-fp32", "classifier|score"]) == 0
    kept = json.loads(artifacts.int8_props(out)["calibration"])["fp32_nodes"]
    first = quantize.input_convolutions(out)
    assert len(first) == 1 and first[0] in kept  # the input layer always stays fp32 (see input_convolutions)
    assert any("score" in name for name in kept) and set(kept) - set(first)
    graph = onnx.load(str(out)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    for node in convs:  # fp32 weights exactly where asked, int8 everywhere else
        assert (produced_by.get(node.input[1]) == "DequantizeLinear") == (node.name not in kept), node.name
    assert quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--frames", "3",
                          "--out", str(tmp_path / "x.onnx"), "--keep-fp32", "no_such_layer"]) == 2


def test_a_relative_export_cache_works(quantized, data_root, tmp_path, monkeypatch):
    """MSSEG_CACHE_DIR=out/cache (relative, as BENCHMARKS.md's commands set it): the quantiser works in a
    temporary folder for a moment, and must still find the fp32 export it made."""
    ckpt, _ = quantized
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSSEG_CACHE_DIR", "cache")
    assert quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--frames", "3",
                              "--out", "relative.int8.onnx"]) == 0
    assert (tmp_path / "relative.int8.onnx").is_file() and any((tmp_path / "cache").glob("*.onnx"))


def test_another_network_input_is_calibrated_and_scored_at_that_size(quantized, data_root, tmp_path):
    """--height/--width make a file for another input (e.g. a zoo model run larger); --eval-split scores
    fp32 and that file at the same size, not at the checkpoint's."""
    ckpt, _ = quantized
    out, report = tmp_path / "small.int8.onnx", tmp_path / "small.json"
    assert quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--frames", "3",
                              "--height", "32", "--width", "48", "--out", str(out), "--eval-split", "val",
                              "--max-drop", "100", "--threads", "1", "--json", str(report)]) == 0
    assert artifacts.onnx_input_size(out) == (32, 48)
    rows = json.loads(report.read_text())["results"]
    assert set(rows) >= {"onnxruntime fp32", "onnxruntime int8"}


def test_msseg_eval_scores_int8_in_each_cpu_engine(quantized, data_root, tmp_path, capsys):
    from msseg_core.cli.evaluate import main as eval_main

    ckpt, report = quantized
    for engine in ["onnxruntime"] + (["openvino"] if _installed("openvino") else []):
        out = tmp_path / f"{engine}.json"
        assert eval_main(["--checkpoint", str(ckpt), "--data-root", str(data_root), "--split", "val", "--device",
                          "cpu", "--backend", engine, "--precision", "int8", "--threads", "1", "--quiet",
                          "--json", str(out)]) == 0
        assert json.loads(out.read_text())["miou"] == pytest.approx(report["results"][f"{engine} int8"]["miou"])


def test_auto_at_int8_races_the_cpu_engines_on_the_one_file(quantized, tmp_path):
    ckpt, _ = quantized
    seg = Segmenter.from_checkpoint(ckpt, precision="int8", cache_dir=tmp_path, **T1)
    auto = seg.describe()["auto"]
    engines = {"onnxruntime"} | ({"openvino"} if _installed("openvino") else set())
    assert seg.backend in engines and set(auto["candidates"]) == engines
    if len(engines) > 1:  # raced: timed and checked against PyTorch fp32
        assert set(auto["timings_ms"]) == engines and auto["agreement"][seg.backend] >= auto["min_agreement"]
