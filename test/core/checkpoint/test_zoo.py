"""The packaged model zoo: every name resolves to a checkpoint that loads on its own, carries the
input size and calibrated temperature its model card states, and serves frames through Segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from msseg_core import zoo
from msseg_core.checkpoint import CheckpointError, load_meta, read_meta, stored_half
from msseg_core.classes import CAMVID

# name -> network input (h, w), as docs/models.md states them
EXPECTED_INPUT = {"camvid": [448, 864], "camvid_fast": [192, 320]}


def test_zoo_lists_both_tiers_and_the_default_is_the_accurate_one() -> None:
    assert zoo.zoo_names() == list(EXPECTED_INPUT)
    assert zoo.DEFAULT_MODEL == "camvid"
    assert read_meta("")[0] == zoo.zoo_path("camvid") == zoo.resolve_checkpoint(None)
    assert zoo.resolve_checkpoint("") == zoo.resolve_checkpoint(None) == zoo.zoo_path("camvid")


@pytest.mark.parametrize("name", list(EXPECTED_INPUT))
def test_zoo_checkpoint_is_packaged_calibrated_and_self_describing(name: str) -> None:
    path = zoo.resolve_checkpoint(name)
    assert path == zoo.zoo_path(name) and path.is_file()
    meta = load_meta(path)
    assert meta.input_size == EXPECTED_INPUT[name]
    assert list(meta.class_names) == list(CAMVID.names)
    assert meta.model == "mssanet" and meta.model_args.get("encoder", "").startswith("efficientnet_lite")
    # calibrated on val (msseg-calibrate): T fitted, and the ECE it reached is recorded
    assert meta.temperature != 1.0 and 0.2 < meta.temperature < 5.0
    calibration = meta.metrics["calibration"]
    assert calibration["split"] == "val" and calibration["ece_after"] < calibration["ece_before"]
    # a model that trained on val cannot be calibrated on it: it carries its train-only sibling's temperature
    if meta.trained_on("val"):
        assert calibration["transferred_from"] and calibration["temperature"] == pytest.approx(meta.temperature,
                                                                                              abs=1e-3)
    assert stored_half(path)  # the zoo ships fp16 storage; inference runs fp32


def test_a_path_still_works_and_unknown_names_fail_clearly(tmp_path, monkeypatch) -> None:
    from msseg_core.runtime.segmenter import Segmenter

    assert zoo.resolve_checkpoint(str(tmp_path / "x.safetensors")) == tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match="not found"):
        Segmenter.from_checkpoint(tmp_path / "missing.safetensors", device="cpu")
    with pytest.raises(ValueError, match="unknown zoo model 'camvid_huge'"):
        zoo.zoo_path("camvid_huge")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)  # a broken install: the file is gone
    with pytest.raises(CheckpointError, match="camvid_fast.*missing from the installation"):
        Segmenter.from_checkpoint("camvid_fast", device="cpu")


def test_fast_zoo_model_segments_a_frame_by_name() -> None:
    from msseg_core.runtime.segmenter import Segmenter

    seg = Segmenter.from_checkpoint("camvid_fast", device="cpu", backend="torch")
    assert list(seg.input_size) == EXPECTED_INPUT["camvid_fast"]
    assert seg.temperature == pytest.approx(load_meta(zoo.zoo_path("camvid_fast")).temperature)
    rgb = np.random.default_rng(0).integers(0, 255, (360, 480, 3), dtype=np.uint8)
    out = seg.segment(rgb, ["labels", "confidence"])
    assert out["labels"].shape == (360, 480) and out["labels"].max() < CAMVID.num_classes
    assert out["confidence"].shape == (360, 480)


@pytest.mark.ros
def test_the_node_takes_a_zoo_name(tmp_path) -> None:
    """`checkpoint:=camvid_fast` on the node (and so in launch files) loads the packaged file; an unknown
    name is one clear configure error naming the parameter."""
    from helpers_ros import InProcessNode, namespace

    from msseg_ros.node.segmentation_node import ConfigError

    with InProcessNode({"checkpoint": "camvid_fast"}, namespace("zoo_node")) as node:
        assert node.node.checkpoint_path == str(zoo.zoo_path("camvid_fast"))
        assert list(node.node.segmenter.input_size) == EXPECTED_INPUT["camvid_fast"]
    with pytest.raises(ConfigError, match="parameter checkpoint: checkpoint not found: camvid_fastest"):
        InProcessNode({"checkpoint": "camvid_fastest"}, namespace("zoo_node_bad"))
