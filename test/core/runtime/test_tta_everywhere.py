"""`tta: flip` wherever a Segmenter is built from the user's words: msseg-eval, msseg-predict, msseg-bag eval
and the node (and its launch files), each giving what Segmenter(tta="flip") gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from msseg_core.runtime.segmenter import Segmenter

FAST = {"device": "cpu", "backend": "torch", "threads": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path]:  # noqa: F811
    from fake_datasets import write_fake_camvid

    root = tmp_path_factory.mktemp("tta_data")
    write_fake_camvid(root, "val", n=3, size=(40, 56), seed=4)
    return root, tiny_checkpoint


def test_msseg_eval_takes_tta(data, tmp_path) -> None:
    from msseg_core.cli.evaluate import main
    from msseg_core.data import build_dataset
    from msseg_core.evaluation.evaluate import evaluate_split

    root, ckpt = data
    reports = {}
    for tta in ("none", "flip"):
        out = tmp_path / f"{tta}.json"
        assert main(["--checkpoint", str(ckpt), "--data-root", str(root), "--split", "val", "--json", str(out),
                     "--backend", "torch", "--device", "cpu", "--threads", "1", "--tta", tta, "--quiet"]) == 0
        reports[tta] = json.loads(out.read_text())
    direct = evaluate_split(Segmenter.from_checkpoint(ckpt, tta="flip", **FAST), build_dataset("camvid", root, "val"))
    assert reports["flip"]["confusion_matrix"] == direct.mat.tolist()
    assert reports["flip"]["confusion_matrix"] != reports["none"]["confusion_matrix"]  # the option did something
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--data-root", str(root), "--split", "val", "--tta", "rotate"])


def test_msseg_eval_takes_the_network_input_size(data, tmp_path) -> None:
    """--input-size as the node's input_height/width: the same confusion matrix as that Segmenter's."""
    from msseg_core.cli.evaluate import main
    from msseg_core.data import build_dataset
    from msseg_core.evaluation.evaluate import evaluate_split

    root, ckpt = data
    out = tmp_path / "big.json"
    assert main(["--checkpoint", str(ckpt), "--data-root", str(root), "--split", "val", "--json", str(out),
                 "--backend", "torch", "--device", "cpu", "--threads", "1", "--input-size", "64x96", "--quiet"]) == 0
    direct = evaluate_split(Segmenter.from_checkpoint(ckpt, input_size=(64, 96), **FAST),
                            build_dataset("camvid", root, "val"))
    assert json.loads(out.read_text())["confusion_matrix"] == direct.mat.tolist()
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--data-root", str(root), "--split", "val", "--input-size", "64by96"])


def test_msseg_predict_takes_tta(data, tmp_path) -> None:
    import cv2

    from msseg_core.cli.predict import main

    root, ckpt = data
    image = sorted((root / "val").glob("*.png"))[0]
    assert main([str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path), "--tta", "flip", "--backend", "torch",
                 "--device", "cpu", "--threads", "1"]) == 0
    written = sorted(tmp_path.glob("*"))
    mask = next(p for p in written if "overlay" not in p.name)
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    expected = Segmenter.from_checkpoint(ckpt, tta="flip", **FAST).segment(rgb, outputs=("color_mask",))["color_mask"]
    got = cv2.cvtColor(cv2.imread(str(mask)), cv2.COLOR_BGR2RGB)
    if got.shape == expected.shape:
        np.testing.assert_array_equal(got, expected)
    else:  # a label PNG
        np.testing.assert_array_equal(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED),
                                      Segmenter.from_checkpoint(ckpt, tta="flip", **FAST).predict(rgb))


@pytest.mark.ros
def test_msseg_bag_eval_takes_tta(data, tmp_path) -> None:
    from msseg_core.data import build_dataset
    from msseg_ros.bag.cli import main
    from msseg_ros.bag.evaluate import evaluate_bag
    from msseg_ros.bag.make import make_bag

    root, ckpt = data
    bag = tmp_path / "bag"
    make_bag(build_dataset("camvid", root, "val"), bag, rate=2.0)
    out = tmp_path / "flip.json"
    assert main(["eval", "--bag", str(bag), "--checkpoint", str(ckpt), "--json", str(out), "--tta", "flip",
                 "--backend", "torch", "--device", "cpu", "--threads", "1"]) == 0
    direct = evaluate_bag(bag, Segmenter.from_checkpoint(ckpt, tta="flip", **FAST))
    assert json.loads(out.read_text())["confusion_matrix"] == direct["confusion_matrix"]


@pytest.mark.ros
def test_the_node_and_its_launch_files_take_tta(tiny_checkpoint) -> None:  # noqa: F811
    import importlib.util

    from helpers_ros import REPO, InProcessNode, SegmentationClient, image_array, namespace, random_rgb, rgb_image

    ns = namespace("tta_node")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "tta": "flip"}, ns) as node, \
            SegmentationClient(ns, outputs=("labels",)) as c:
        assert node.node.segmenter.describe()["tta"] == "flip"
        c.wait_until_served()
        rgb = random_rgb(48, 64, seed=8)
        labels = image_array(c.request(rgb_image(rgb))["labels"])
    np.testing.assert_array_equal(labels, Segmenter.from_checkpoint(tiny_checkpoint, tta="flip", **FAST).predict(rgb))
    from msseg_ros.node.segmentation_node import ConfigError

    with pytest.raises(ConfigError, match="parameter tta"):
        InProcessNode({"checkpoint": str(tiny_checkpoint), "tta": "rotate"}, namespace("tta_bad")).close()
    for name in ("camvid.launch.py", "multi_camera.launch.py"):
        spec = importlib.util.spec_from_file_location(name[:-3].replace(".", "_"), REPO / "launch" / name)
        launch = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(launch)
        args = launch.node_arguments({"tta": "flip"}, str(REPO))
        assert "tta:=flip" in args, args
