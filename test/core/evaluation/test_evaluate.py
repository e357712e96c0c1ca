"""msseg-eval: the report's keys and numbers, void pixels, batching, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msseg_core.classes import CAMVID, IGNORE_INDEX, KITTI_ROAD
from msseg_core.cli.evaluate import main
from msseg_core.evaluation.evaluate import REPORT_KEYS, confusions_per_image, evaluate_split
from msseg_core.evaluation.metrics import ConfusionMatrix
from msseg_core.runtime.segmenter import Segmenter


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory) -> Path:
    from fake_datasets import write_fake_camvid

    return write_fake_camvid(tmp_path_factory.mktemp("camvid"), "val", n=4, size=(32, 48), seed=1)


@pytest.fixture
def segmenter(tiny_checkpoint) -> Segmenter:
    return Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", threads=1)


class ListDataset:
    """(image, mask) pairs in memory, with the ClassSet the loaders carry."""

    def __init__(self, items, classes=CAMVID):
        self.items, self.classes = items, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def hand_miou(preds, masks, n: int) -> tuple[float, np.ndarray]:
    """mIoU with plain numpy: per class |pred & true| / |pred | true| over labelled pixels."""
    p = np.concatenate([x.ravel() for x in preds]).astype(np.int64)
    t = np.concatenate([x.ravel() for x in masks]).astype(np.int64)
    keep = t != IGNORE_INDEX
    p, t = p[keep], t[keep]
    ious = []
    for c in range(n):
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(np.sum((p == c) & (t == c)) / union)
    mat = np.zeros((n, n), np.int64)
    np.add.at(mat, (t, p), 1)
    return float(np.mean(ious)), mat


def test_json_has_exactly_the_keys_and_the_hand_computed_miou(tmp_path, tiny_checkpoint, camvid_root, segmenter):
    out = tmp_path / "report" / "eval.json"
    rc = main(["--checkpoint", str(tiny_checkpoint), "--data-root", str(camvid_root), "--split", "val",
               "--json", str(out), "--device", "cpu", "--backend", "torch", "--threads", "1", "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report) == set(REPORT_KEYS)
    assert report["checkpoint"] == str(tiny_checkpoint) and report["num_images"] == 4
    assert list(report["per_class_iou"]) == list(CAMVID.names)
    from msseg_core.data import build_dataset

    ds = build_dataset("camvid", camvid_root, "val")
    preds = [segmenter.predict(ds[i][0]) for i in range(len(ds))]
    masks = [ds[i][1] for i in range(len(ds))]
    assert any((m == IGNORE_INDEX).any() for m in masks)  # the fake data has void pixels
    miou, mat = hand_miou(preds, masks, CAMVID.num_classes)
    assert report["miou"] == pytest.approx(miou, abs=1e-12)
    assert report["confusion_matrix"] == mat.tolist()
    assert report["pixel_acc"] == pytest.approx(np.trace(mat) / mat.sum())
    png = out.with_suffix(".confusion.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_void_pixels_never_count(segmenter):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    mask = np.full((24, 40), IGNORE_INDEX, np.uint8)
    mask[:5, :7] = 3
    cm = evaluate_split(segmenter, ListDataset([(image, mask)]))
    assert cm.mat.sum() == 35 and cm.mat[3].sum() == 35
    # the predictions under the void are dropped, whatever they are
    pred = segmenter.predict(image)
    assert len(np.unique(pred[mask == IGNORE_INDEX])) >= 1
    expected = np.zeros_like(cm.mat)
    np.add.at(expected, (mask[:5, :7].ravel(), pred[:5, :7].ravel()), 1)
    np.testing.assert_array_equal(cm.mat, expected)


def test_batches_of_mixed_sizes_equal_one_by_one(segmenter):
    rng = np.random.default_rng(1)
    items = []
    for h, w in [(24, 40), (24, 40), (30, 20), (24, 40), (30, 20)]:
        items.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 11, (h, w), dtype=np.uint8)))
    one = evaluate_split(segmenter, ListDataset(items), batch_size=1)
    many = evaluate_split(segmenter, ListDataset(items), batch_size=3)
    np.testing.assert_array_equal(one.mat, many.mat)
    assert one.num_images == many.num_images == 5


def test_per_image_matrices_sum_to_the_splits_matrix(segmenter):
    """What msseg-eval's bootstrap resamples: one matrix per image, in order, adding up to the split's."""
    rng = np.random.default_rng(4)
    items = [(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), rng.integers(0, 11, (24, 40), dtype=np.uint8))
             for _ in range(5)]
    mats = confusions_per_image(segmenter, ListDataset(items), batch_size=2)
    assert mats.shape == (5, 11, 11) and (mats.sum((1, 2)) == 24 * 40).all()
    whole = evaluate_split(segmenter, ListDataset(items))
    np.testing.assert_array_equal(mats.sum(0), whole.mat)
    assert ConfusionMatrix.of(mats).num_images == whole.num_images == 5


def test_labels_of_another_class_set_are_refused(segmenter):
    item = (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="differ from the dataset's"):
        evaluate_split(segmenter, ListDataset([item], classes=KITTI_ROAD))
    with pytest.raises(ValueError, match="does not match image"):
        evaluate_split(segmenter, ListDataset([(item[0], np.zeros((4, 8), np.uint8))]))


def test_cli_errors_are_one_clear_line(tmp_path, tiny_checkpoint, camvid_root, capsys):
    args = ["--data-root", str(camvid_root), "--device", "cpu", "--backend", "torch", "--threads", "1"]
    assert main(["--checkpoint", str(tmp_path / "none.safetensors"), "--split", "val", *args]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["--checkpoint", str(tiny_checkpoint), "--split", "nosuchsplit", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msseg-eval: error:") and "nosuchsplit" in err


def test_a_score_on_a_split_the_model_trained_on_is_flagged(tmp_path, tiny_checkpoint, camvid_root, capsys):
    """The zoo models train on train+val: msseg-eval on val says so (stderr and the JSON), since that score
    measures fit; on a split it never saw, nothing is added."""
    from msseg_core.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    meta.dataset = "camvid"
    meta.recipe = {"data": {"train_split": "train+val", "val_split": "val"}}
    both = save_checkpoint(tmp_path / "trainval.safetensors", model, meta)
    assert meta.trained_on("val") and meta.trained_on("train") and not meta.trained_on("test")
    assert not meta.trained_on("val", dataset="folder")  # another dataset's 'val' is other images
    args = ["--data-root", str(camvid_root), "--split", "val", "--device", "cpu", "--backend", "torch",
            "--threads", "1", "--quiet"]
    capsys.readouterr()
    assert main(["--checkpoint", str(both), "--json", str(tmp_path / "a.json"), *args]) == 0
    assert "trained on 'val'" in capsys.readouterr().err
    assert json.loads((tmp_path / "a.json").read_text())["split_in_training"] is True
    meta.recipe = {"data": {"train_split": "train", "val_split": "val"}}
    only = save_checkpoint(tmp_path / "train.safetensors", model, meta)
    assert main(["--checkpoint", str(only), "--json", str(tmp_path / "b.json"), *args]) == 0
    assert "not held out" not in capsys.readouterr().err
    assert "split_in_training" not in json.loads((tmp_path / "b.json").read_text())
    # compared against the train+val model, the flag goes with the model that trained on the split
    assert main(["--checkpoint", str(only), "--against", str(both), "--bootstrap", "50", "--json",
                 str(tmp_path / "c.json"), *args]) == 0
    assert f"{both} trained on 'val'" in capsys.readouterr().err
    report = json.loads((tmp_path / "c.json").read_text())
    assert "split_in_training" not in report and report["against"]["split_in_training"] is True
