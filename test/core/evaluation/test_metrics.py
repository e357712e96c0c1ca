"""ConfusionMatrix and the metrics every evaluator reports, checked against hand computations."""

import json
import math

import numpy as np
import pytest
import torch

from msseg_core.evaluation.metrics import ConfusionMatrix

# 3 classes, 255 = void. Ground truth and prediction for 8 pixels (2 of them void).
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 1]], dtype=np.uint8)
# Hand count (rows = truth, cols = prediction), void pixels excluded:
#   truth 0: pred 0, 1      -> [1, 1, 0]
#   truth 1: pred 1, 1      -> [0, 2, 0]
#   truth 2: pred 2, 0      -> [1, 0, 1]
EXPECTED = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_matrix_matches_hand_count_and_ignores_void():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    np.testing.assert_array_equal(cm.mat, EXPECTED)
    assert cm.num_images == 1


def test_derived_metrics_match_hand_computation():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+1+1), class 1: 2/(2+1+0), class 2: 1/(1+0+1)
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(cm.class_accuracy(), [1 / 2, 1.0, 1 / 2])
    assert cm.mean_accuracy == pytest.approx(2 / 3)
    assert cm.pixel_accuracy == pytest.approx(4 / 6)


def test_torch_and_numpy_inputs_agree_and_batches_count_images():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED, GT)
    a.update(PRED, GT)
    b.update(torch.from_numpy(np.stack([PRED, PRED])), torch.from_numpy(np.stack([GT, GT])))
    np.testing.assert_array_equal(a.mat, b.mat)
    assert a.num_images == b.num_images == 2


def test_absent_class_is_excluded_from_means_and_null_in_json():
    cm = ConfusionMatrix(4)  # class 3 never appears, never predicted
    cm.update(PRED, GT)
    assert math.isnan(cm.iou()[3])
    assert cm.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    report = cm.to_dict(["a", "b", "c", "d"])
    assert report["per_class_iou"]["d"] is None
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN leaks into reports
    assert set(report) == {"miou", "mean_acc", "pixel_acc", "per_class_iou", "per_class_acc",
                           "confusion_matrix", "num_images"}


def test_merge_adds_counts():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED, GT)
    b.update(GT, GT)
    total = ConfusionMatrix(3)
    total.update(PRED, GT)
    total.update(GT, GT)
    a.merge(b)
    np.testing.assert_array_equal(a.mat, total.mat)
    assert a.num_images == 2


@pytest.mark.parametrize("bad_gt", [np.array([[0, 3]]), np.array([[0, 11]])])
def test_labels_outside_class_range_are_an_error(bad_gt):
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(3).update(np.zeros_like(bad_gt), bad_gt)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).update(np.zeros((2, 2)), np.zeros((2, 3)))
