"""Split expressions: 'train+val', and frames chosen by name prefix to hold a whole sequence out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msseg_core.data import DatasetError, build_dataset
from msseg_core.splits import SplitError, SplitPart, parse_split, splits_overlap


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """A CamVid folder whose train split holds two sequences (as the real one holds three) and val a third."""
    from fake_datasets import write_fake_camvid

    root = tmp_path_factory.mktemp("camvid_seq")
    write_fake_camvid(root, "train", n=3, size=(16, 24), seed=0, sequence="0001TP")
    write_fake_camvid(root, "train", n=2, size=(16, 24), seed=1, sequence="0006R0")
    write_fake_camvid(root, "val", n=2, size=(16, 24), seed=2, sequence="0016E5")
    return root


def test_expressions_read_as_parts():
    assert parse_split("train") == [SplitPart("train")]
    assert parse_split(" train : -0006R0 , 0001TP + val") == [
        SplitPart("train", ("0006R0", "0001TP"), drop=True), SplitPart("val")]
    assert parse_split("train:0006R0") == [SplitPart("train", ("0006R0",), drop=False)]
    assert "+".join(map(str, parse_split("train:-0006R0+val"))) == "train:-0006R0+val"


@pytest.mark.parametrize("spec, message", [
    ("train+train", "twice"),
    ("+val", "empty split name"),
    ("train:", "give name prefixes"),
    ("train:-", "give name prefixes"),
    ("train:0006R0,,0001TP", "give name prefixes"),
])
def test_malformed_expressions_say_how_to_write_them(spec, message):
    with pytest.raises(SplitError, match=message):
        parse_split(spec)


@pytest.mark.parametrize("a, b, overlap", [
    ("val", "train+val", True),
    ("test", "train+val", False),
    ("train:0006R0", "train:-0006R0+val", False),  # leave one sequence out
    ("train:0006R0", "train", True),
    ("train:0006R0", "train:0006", True),  # one prefix inside the other
    ("train:0006R0", "train:0001TP", False),
    ("train:0006R0,0001TP", "train:-0006R0", True),  # 0001TP is in both
    ("train:0006R0,0001TP", "train:-0006R0,0001TP", False),
    ("train:-0006R0", "train:-0001TP", True),
])
def test_overlap_is_assumed_unless_the_expressions_prove_otherwise(a, b, overlap):
    assert splits_overlap(a, b) is overlap
    assert splits_overlap(b, a) is overlap


def test_leaving_a_sequence_out_splits_the_frames_without_loss_or_overlap(sequences):
    train, val = build_dataset("camvid", sequences, "train"), build_dataset("camvid", sequences, "val")
    rest = build_dataset("camvid", sequences, "train:-0006R0+val")
    held = build_dataset("camvid", sequences, "train:0006R0")
    assert held.names == [n for n in train.names if n.startswith("0006R0")] and len(held) == 2
    assert rest.names == [n for n in train.names if not n.startswith("0006R0")] + val.names
    assert set(rest.names).isdisjoint(held.names)
    assert sorted(rest.names + held.names) == sorted(train.names + val.names)
    assert held.split == "train:0006R0" and rest.split == "train:-0006R0+val"
    k = train.names.index(held.names[1])
    for got, want in zip(held.load(1), train.load(k), strict=True):
        np.testing.assert_array_equal(got, want)
    both = build_dataset("camvid", sequences, "train:0001TP+train:0006R0")  # one split read once, in order
    assert both.names == [n for n in train.names if n.startswith("0001TP")] + held.names


def test_a_prefix_that_names_no_frame_is_an_error_not_a_silent_leak(sequences):
    """A typo in the held-out sequence ('0006RO') would otherwise train on the very frames meant to be
    held out."""
    with pytest.raises(DatasetError, match=r"no frame of 'train'.*'0006RO'.*0001TP, 0006R0"):
        build_dataset("camvid", sequences, "train:-0006RO+val")
    with pytest.raises(DatasetError, match="leaves no frame"):
        build_dataset("camvid", sequences, "train:-0001TP,0006R0")
    with pytest.raises(DatasetError, match="twice"):
        build_dataset("camvid", sequences, "train:0001+train:0001TP")
    with pytest.raises(DatasetError, match="give name prefixes"):
        build_dataset("camvid", sequences, "train:")


def test_recipes_check_their_split_expressions():
    from msseg_core.training.recipe import RecipeError, load_recipe

    assert load_recipe(None, ["data.train_split=train:-0006R0+val", "data.val_split=train:0006R0"])
    with pytest.raises(RecipeError, match="data.val_split: .*give name prefixes"):
        load_recipe(None, ["data.val_split=train:-"])


def test_a_held_out_sequence_counts_as_held_out_for_eval_and_calibration(tmp_path, tiny_checkpoint, sequences,
                                                                          capsys):
    """msseg-eval flags a score on frames the model trained on but not one on its held-out sequence;
    msseg-calibrate refuses to fit a temperature on trained frames (it would come out over-confident)."""
    from msseg_core.checkpoint import load_checkpoint, save_checkpoint
    from msseg_core.cli.calibrate import main as calibrate
    from msseg_core.cli.evaluate import main as evaluate

    model, meta = load_checkpoint(tiny_checkpoint)
    meta.dataset = "camvid"
    meta.recipe = {"data": {"train_split": "train:-0006R0+val", "val_split": "train:0006R0"}}
    loso = save_checkpoint(tmp_path / "loso.safetensors", model, meta)
    assert not meta.trained_on("train:0006R0") and meta.trained_on("train") and meta.trained_on("val")
    common = ["--checkpoint", str(loso), "--data-root", str(sequences), "--device", "cpu"]
    for split, flagged in (("train:0006R0", False), ("train", True)):
        report = tmp_path / f"{split}.json"
        assert evaluate([*common, "--split", split, "--backend", "torch", "--quiet", "--json", str(report)]) == 0
        assert json.loads(report.read_text()).get("split_in_training", False) is flagged
    capsys.readouterr()
    assert calibrate([*common, "--split", "val", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "trained on frames of 'val'" in capsys.readouterr().err and not (tmp_path / "c.safetensors").exists()
    assert calibrate([*common, "--split", "train:0006R0", "--out", str(tmp_path / "c.safetensors")]) == 0


@pytest.mark.slow
def test_a_run_trains_without_the_held_out_sequence_and_validates_on_it(tmp_path, sequences, capsys):
    """A real training step on 'train:-0006R0+val' scored on 'train:0006R0': the run says what it reads, the
    checkpoint records the expressions, and the held-out sequence stays held out for it."""
    from msseg_core.checkpoint import load_meta
    from msseg_core.training.recipe import load_recipe
    from msseg_core.training.train import fit

    recipe = load_recipe(None, [
        "model.name=mssanet", "model.args={width: 0.0625, num_pools: 3}", f"data.root={sequences}",
        "data.crop_size=[16, 24]", "data.eval_size=[16, 24]", "data.workers=0", "train.epochs=1",
        "train.batch_size=2", "train.device=cpu", "data.train_split=train:-0006R0+val",
        "data.val_split=train:0006R0"])
    fit(recipe, tmp_path / "run")
    said = capsys.readouterr().out
    assert "5 training frames (train:-0006R0+val), 2 validation frames (train:0006R0)" in said
    assert "part of the training split" not in said  # no overlap note: the val sequence is held out
    meta = load_meta(tmp_path / "run" / "last.safetensors")
    assert meta.recipe["data"]["train_split"] == "train:-0006R0+val"
    assert not meta.trained_on("train:0006R0") and meta.trained_on("val")
    assert 0.0 <= meta.metrics["val_miou"] <= 1.0
