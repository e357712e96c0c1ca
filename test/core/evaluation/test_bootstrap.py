"""Intervals for a split's mIoU and paired differences between two models (msseg-eval --bootstrap/--against)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msseg_core.evaluation.bootstrap import BootstrapSettings, block_indices, paired_difference, score_interval
from msseg_core.evaluation.metrics import ConfusionMatrix, iou_of, mean_over_present

SETTINGS = BootstrapSettings(samples=400, block=5, seed=3)


def frame(correct: int, wrong: int, classes: int = 3) -> np.ndarray:
    """One frame's confusion matrix: each class has `correct` pixels right and `wrong` called the next class."""
    mat = np.zeros((classes, classes), np.int64)
    for c in range(classes):
        mat[c, c] = correct
        mat[c, (c + 1) % classes] = wrong
    return mat


def frames(errors: list[int]) -> np.ndarray:
    return np.stack([frame(100 - e, e) for e in errors])


def width(interval) -> float:
    return interval.high - interval.low


def test_block_indices_are_runs_of_consecutive_frames_that_wrap_round():
    rng = np.random.default_rng(0)
    idx = block_indices(23, 5, rng)
    assert idx.shape == (23,) and idx.min() >= 0 and idx.max() < 23
    for run in np.split(idx, range(5, 23, 5)):
        assert np.array_equal(run, (run[0] + np.arange(len(run))) % 23)
    assert len(block_indices(3, 10, rng)) == 3  # a block longer than the split is the split, rotated
    with pytest.raises(ValueError):
        block_indices(0, 5, rng)


def test_identical_frames_leave_no_uncertainty_and_the_estimate_is_the_splits_miou():
    mats = frames([20] * 12)
    estimate = score_interval(mats, SETTINGS)
    assert estimate.miou.estimate == pytest.approx(ConfusionMatrix.of(mats).miou)
    assert estimate.miou.low == pytest.approx(estimate.miou.estimate)
    assert estimate.miou.high == pytest.approx(estimate.miou.estimate)


def test_frames_that_disagree_widen_the_interval_around_the_estimate():
    rng = np.random.default_rng(1)
    calm = frames(list(rng.integers(18, 23, 40)))
    rough = frames(list(rng.integers(0, 60, 40)))
    for mats in (calm, rough):
        e = score_interval(mats, SETTINGS).miou
        assert e.low <= e.estimate <= e.high
    assert width(score_interval(rough, SETTINGS).miou) > 3 * width(score_interval(calm, SETTINGS).miou)


def test_runs_of_alike_frames_are_not_counted_as_independent_evidence():
    """Eight scenes, five near-copies each: resampling single frames would claim a narrower interval than
    resampling the runs the frames come in."""
    rng = np.random.default_rng(2)
    mats = frames([e for e in rng.integers(0, 60, 8) for _ in range(5)])
    single = score_interval(mats, BootstrapSettings(samples=800, block=1, seed=0)).miou
    runs = score_interval(mats, BootstrapSettings(samples=800, block=5, seed=0)).miou
    assert width(runs) > 1.4 * width(single)


def test_a_model_against_itself_differs_by_exactly_nothing():
    mats = frames([3, 40, 12, 7, 25, 60, 1, 9])
    diff = paired_difference(mats, mats, SETTINGS)
    assert (diff.miou.estimate, diff.miou.low, diff.miou.high) == (0.0, 0.0, 0.0)
    assert diff.a_ahead == 0.0 and all(c.estimate == 0.0 for c in diff.per_class)


def test_pairing_separates_a_small_steady_gain_from_frames_of_very_different_difficulty():
    """A is two pixels better than B on every frame, while the frames range from easy to hard: alone, the
    two intervals overlap; paired, the gain is certain."""
    errors = [2 + 7 * i for i in range(12)]
    a, b = frames(errors), frames([e + 2 for e in errors])
    alone_a, alone_b = score_interval(a, SETTINGS).miou, score_interval(b, SETTINGS).miou
    assert alone_a.low < alone_b.high  # the unpaired intervals overlap
    diff = paired_difference(a, b, SETTINGS)
    assert diff.miou.estimate == pytest.approx(ConfusionMatrix.of(a).miou - ConfusionMatrix.of(b).miou)
    assert diff.miou.low > 0 and diff.a_ahead == 1.0
    swapped = paired_difference(b, a, SETTINGS)
    assert swapped.miou.high < 0 and swapped.a_ahead == 0.0


def test_the_two_models_must_be_scored_on_the_same_frames():
    with pytest.raises(ValueError, match="different frames"):
        paired_difference(frames([1, 2, 3]), frames([1, 2]), SETTINGS)
    with pytest.raises(ValueError, match="per-frame confusion matrices"):
        score_interval(np.zeros((3, 3)), SETTINGS)
    with pytest.raises(ValueError, match="samples >= 2"):
        BootstrapSettings(samples=1)


def test_stacked_ious_equal_one_matrix_at_a_time_and_absent_classes_drop_out_of_the_mean():
    mats = frames([5, 30, 70])
    mats[1, 2, :] = 0  # class 2 absent from frame 1: still present in the others
    mats[1, :, 2] = 0
    stacked = iou_of(mats)
    for one, mat in zip(stacked, mats, strict=True):
        cm = ConfusionMatrix.of(mat[None])
        np.testing.assert_allclose(one, cm.iou())
        assert mean_over_present(one) == pytest.approx(cm.miou)
    empty = np.zeros((3, 3), np.int64)
    assert np.isnan(iou_of(empty)).all() and mean_over_present(iou_of(empty)) == 0.0


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory):
    from fake_datasets import write_fake_camvid

    return write_fake_camvid(tmp_path_factory.mktemp("camvid"), "val", n=6, size=(32, 48), seed=5)


def eval_cli(*args: str) -> int:
    from msseg_core.cli.evaluate import main

    return main([*args, "--device", "cpu", "--backend", "torch", "--threads", "1", "--quiet"])


def test_msseg_eval_reports_an_interval_and_a_paired_difference(tmp_path, tiny_checkpoint, camvid_root, capsys):
    from tiny_model import write_tiny_checkpoint

    other = write_tiny_checkpoint(tmp_path / "other.safetensors", seed=7)
    out = tmp_path / "cmp.json"
    common = ["--data-root", str(camvid_root), "--split", "val", "--block", "2"]
    assert eval_cli("--checkpoint", str(tiny_checkpoint), "--against", str(other), "--json", str(out), *common) == 0
    printed = capsys.readouterr().out
    assert "A - B" in printed and "resamples" in printed
    report = json.loads(out.read_text())
    assert report["against"]["checkpoint"] == str(other) and report["against"]["num_images"] == 6
    miou, low, high = report["bootstrap"]["miou"]
    assert miou == report["miou"] and low <= miou <= high
    assert report["bootstrap"]["samples"] == 1000 and report["bootstrap"]["block"] == 2
    diff, low, high = report["difference"]["miou"]
    assert diff == pytest.approx(report["miou"] - report["against"]["miou"]) and low <= diff <= high
    assert list(report["difference"]["per_class_iou"]) == list(report["per_class_iou"])

    same = tmp_path / "same.json"
    assert eval_cli("--checkpoint", str(tiny_checkpoint), "--against", str(tiny_checkpoint), "--json", str(same),
                    *common) == 0
    assert json.loads(same.read_text())["difference"]["miou"] == [0.0, 0.0, 0.0]


def test_msseg_eval_refuses_a_comparison_without_resamples(tiny_checkpoint, camvid_root, capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--data-root", str(camvid_root), "--split", "val"]
    with pytest.raises(SystemExit) as exit_:
        eval_cli(*common, "--against", str(tiny_checkpoint), "--bootstrap", "0")
    assert exit_.value.code == 2 and "--against" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli(*common, "--bootstrap", "1")
