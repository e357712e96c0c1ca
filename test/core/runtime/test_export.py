"""msseg-export: ONNX and TorchScript files reproduce PyTorch, describe themselves, and load in Segmenter."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_model import TINY_MODEL, write_tiny_checkpoint

from msseg_core.checkpoint import CheckpointError, load_checkpoint, load_onnx_meta
from msseg_core.cli.export import main
from msseg_core.runtime.artifacts import example_input, export_onnx, load_torchscript
from msseg_core.runtime.segmenter import Segmenter

T1 = {"device": "cpu", "threads": 1}  # see test_backends.py: fast and deterministic on a shared CPU


def _checkpoint(path, name, args):
    return write_tiny_checkpoint(path, name, (48, 64), **args)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """conftest's tiny checkpoint (same recipe), built once for the module."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", *TINY_MODEL)


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    """The fewest layers the registry builds: the torch.export-based exporter's time grows with them."""
    args = {"width": 0.0625, "depth": 1, "base_channels": 8}
    return _checkpoint(tmp_path_factory.mktemp("micro") / "micro.safetensors", "dsunet", args)


def _torch_logits(model, x):
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_onnx_export_matches_pytorch_and_carries_the_metadata(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(out),
                 "--exporter", "legacy"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit diff|" in printed and "label agreement" in printed and "OK" in printed
    model, meta = load_checkpoint(tiny_checkpoint)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and sess.get_outputs()[0].name == "logits"
    x = example_input(1, 48, 64, meta, seed=3)
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], _torch_logits(model, x), atol=1e-4, rtol=1e-4)
    embedded = load_onnx_meta(out)
    assert embedded.class_names == meta.class_names and embedded.palette == meta.palette
    assert embedded.mean == meta.mean and embedded.std == meta.std and embedded.model == meta.model
    assert embedded.road_classes == meta.road_classes and embedded.input_size == [48, 64]
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert {"class_names", "palette", "mean", "std", "input_size", "model"} <= set(props)


def test_bare_onnx_file_runs_in_segmenter_with_its_own_metadata(tiny_checkpoint, tmp_path):
    model, meta = load_checkpoint(tiny_checkpoint)
    path = export_onnx(model, meta, tmp_path / "bare.onnx", (40, 56), exporter="legacy")
    seg = Segmenter.from_checkpoint(path, backend="onnxruntime", **T1)  # no checkpoint anywhere
    assert seg.backend == "onnxruntime" and seg.model is None and seg.input_size == (40, 56)
    assert seg.class_names == meta.class_names and seg.road_classes == meta.road_classes
    np.testing.assert_array_equal(seg.palette, np.asarray(meta.palette, np.uint8))
    ref = Segmenter.from_checkpoint(tiny_checkpoint, backend="torch", input_size=(40, 56), **T1)
    rgb = np.random.default_rng(0).integers(0, 256, (80, 112, 3), dtype=np.uint8)
    out = seg.segment(rgb)
    assert (out["labels"] == ref.predict(rgb)).mean() >= 0.99
    with pytest.raises(ValueError, match="exported at"):
        Segmenter.from_checkpoint(path, input_size=(48, 64), **T1)
    with pytest.raises(ValueError, match="PyTorch model"):
        Segmenter(None, meta, backend="torch", onnx_path=path, **T1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, for a plain ONNX file
def test_onnx_without_msseg_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.randn(1, 3, 4, 4),), str(path), dynamo=False)
    with pytest.raises(CheckpointError, match="no msseg metadata"):
        Segmenter.from_checkpoint(path, **T1)


def test_static_batch_onnx_serves_batches_frame_by_frame(tiny_checkpoint, tmp_path):
    model, meta = load_checkpoint(tiny_checkpoint)
    path = export_onnx(model, meta, tmp_path / "b1.onnx", exporter="legacy")
    seg = Segmenter.from_checkpoint(path, **T1)
    images = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(3)]
    for batch, single in zip(seg.predict_batch(images), [seg.predict(im) for im in images], strict=True):
        np.testing.assert_array_equal(batch, single)


@pytest.mark.slow
def test_dynamic_and_fp16_onnx_exports_pass_their_checks(tiny_checkpoint, micro_checkpoint, tmp_path):
    dyn = tmp_path / "dyn.onnx"  # the default (torch.export-based) exporter: batch, height, width dynamic
    assert main(["--checkpoint", str(micro_checkpoint), "--out", str(dyn), "--dynamic"]) == 0
    model, meta = load_checkpoint(micro_checkpoint)
    sess = ort.InferenceSession(str(dyn), providers=["CPUExecutionProvider"])
    x = example_input(2, 40, 56, meta, seed=4)
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], _torch_logits(model, x), atol=1e-4, rtol=1e-4)
    half = tmp_path / "half.onnx"
    assert main(["--checkpoint", str(tiny_checkpoint), "--out", str(half), "--fp16", "--exporter", "legacy"]) == 0
    assert ort.InferenceSession(str(half), providers=["CPUExecutionProvider"]).get_inputs()[0].type == "tensor(float16)"


def test_legacy_exporter_refuses_dynamic_height_and_width(tiny_checkpoint, tmp_path, monkeypatch):
    from msseg_core.runtime import artifacts as export

    model, meta = load_checkpoint(tiny_checkpoint)
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no dynamo")))
    with pytest.raises(RuntimeError, match="legacy: cannot export a dynamic height/width"):
        export.export_onnx(model, meta, tmp_path / "x.onnx", dynamic=True)


def test_torchscript_export_matches_pytorch(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    assert main(["--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--out", str(out),
                 "--height", "32", "--width", "48"]) == 0
    assert "label agreement" in capsys.readouterr().out
    module, ts_meta = load_torchscript(out)
    model, meta = load_checkpoint(tiny_checkpoint)
    assert ts_meta.class_names == meta.class_names and ts_meta.input_size == [32, 48]
    x = example_input(2, 32, 48, meta, seed=5)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), _torch_logits(model, x), atol=1e-5, rtol=1e-5)


def test_export_exit_status_reports_tolerance_and_bad_input(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    assert main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--exporter", "legacy",
                 "--min-agreement", "1.01"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
