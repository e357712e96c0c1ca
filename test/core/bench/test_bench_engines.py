"""msseg-bench over engines x precisions (the patched bench.py): rows for every backend x precision,
threads in every row, int8 from the checkpoint's file or a speed-only one."""

import json

import pytest

from msseg_core.cli import bench
from msseg_core.cli import quantize as quantize_cli

T = ["--iters", "2", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def ckpt_with_int8(tmp_path_factory):
    from fake_datasets import write_fake_camvid
    from tiny_model import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("camvid")
    write_fake_camvid(root, "train", n=3, size=(48, 64))
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("c") / "tiny.safetensors", input_size=(48, 64))
    assert quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(root), "--frames", "3"]) == 0
    return ckpt


def test_segmenter_bench_covers_every_backend_and_precision(ckpt_with_int8, tmp_path):
    pytest.importorskip("openvino")
    assert bench.main(["segmenter", "--checkpoint", str(ckpt_with_int8), "--sizes", "48x64", "--frames", "2",
                       "--backends", "naive,torch,onnxruntime,openvino", "--precision", "fp32,int8",
                       "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path), *T]) == 0
    rows = json.loads((tmp_path / "segmenter.json").read_text())["results"]
    got = [(r["backend"], r["precision"]) for r in rows]
    assert got == [("naive", "fp32"), ("torch", "fp32"), ("torch", "int8"), ("onnxruntime", "fp32"),
                   ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    for r in rows:
        assert r["threads"] == 1
        if (r["backend"], r["precision"]) == ("torch", "int8"):
            assert "INT8 runs in onnxruntime or openvino" in r["error"]
            continue
        assert "error" not in r, r
        assert r["describe"]["precision"] == r["precision"]
        if r["precision"] == "fp32":
            assert r["labels_agreement_vs_first"] >= 0.99
    md = (tmp_path / "segmenter.md").read_text()
    assert "| openvino | int8 | 1 | 48x64 |" in md


def test_model_bench_runs_int8_in_the_onnx_engines(tmp_path):
    pytest.importorskip("openvino")
    assert bench.main(["model", "--models", "mssanet", "--model-args", '{"width": 0.0625}', "--sizes", "48x64",
                       "--precision", "fp32,int8", "--modes", "eager,onnxruntime,openvino,tensorrt", "--batch", "1",
                       "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "m.json"), *T]) == 0
    rows = {(r["mode"], r["precision"]): r for r in json.loads((tmp_path / "m.json").read_text())["results"]}
    for key in [("eager", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
                ("openvino", "int8")]:
        assert "error" not in rows[key] and rows[key]["threads"] == 1, rows[key]
    assert rows[("eager", "int8")]["error"].startswith("skipped")
    assert "error" in rows[("tensorrt", "fp32")]  # no GPU or no TensorRT here: a row that says why
