"""Training: recipes and overrides, pickle-free training state, mfb weights, schedules, and real tiny
runs on generated CamVid data (learning, checkpoints that rebuild the model, exact resume)."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from paths import REPO
from safetensors.torch import load_file

from msseg_core.cli import train as train_cli
from msseg_core.training import network
from msseg_core.training import train as train_mod
from msseg_core.training.losses import mfb_weights
from msseg_core.training.recipe import RecipeError, load_recipe, save_recipe
from msseg_core.training.schedule import lr_factor, set_schedule_step
from msseg_core.training.state import load_train_state, rng_state, save_train_state, set_rng_state

RECIPES = sorted((REPO / "config" / "train").glob("*.yaml"))


# ------------------------------------------------------------------------------------------ recipes
def test_overrides_are_typed_and_nested():
    r = load_recipe(None, ["train.epochs=3", "optim.lr=1e-3", "data.crop_size=180x240", "train.amp=false",
                           "model.args.width=0.25", "data.root=/tmp/x y", "data.eval_size=[90, 120]"])
    assert r.train.epochs == 3 and isinstance(r.train.epochs, int)
    assert r.optim.lr == pytest.approx(1e-3) and isinstance(r.optim.lr, float)
    assert r.data.crop_size == [180, 240] and r.data.eval_size == [90, 120]
    assert r.train.amp is False and r.model.args == {"width": 0.25} and r.data.root == "/tmp/x y"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown recipe key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("trian.epochs=3", "unknown recipe key 'trian.epochs'"),
    ("train.epochs=three", "train.epochs expects an integer, got 'three'"),
    ("train.epochs=2.5", "train.epochs expects an integer"),
    ("train.amp=maybe", "train.amp expects true or false"),
    ("optim.lr=fast", "optim.lr expects a number"),
    ("data.crop_size=big", "data.crop_size expects a list"),
    ("data.crop_size=[1, x]", "data.crop_size[1] expects an integer"),
    ("data.crop_size=[1, 2, 3]", "data.crop_size must be [height, width]"),
    ("data.stretch=0", "data.stretch must be > 0"),
    ("data.jitter=1.0", "data.jitter must be in [0, 1)"),
    ("optim.name=rmsprop", "optim.name must be one of adam, adamw, sgd"),
    ("model.args=3", "model.args expects a mapping"),
    ("train=3", "'train' is a section"),
    ("train.epochs", "--set expects key=value"),
    ("model.args.num_classes=3", "must not set num_classes"),
])
def test_override_errors_are_clear(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(None, [override])
    assert message in str(err.value)


def test_yaml_is_checked_like_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: ten\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: train.epochs expects an integer"):
        load_recipe(bad)
    bad.write_text("trainer:\n  epochs: 1\n")
    with pytest.raises(RecipeError, match="unknown recipe section 'trainer'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_saved_recipe_round_trips(tmp_path):
    r = load_recipe(None, ["train.epochs=7", "model.args.width=0.5", "optim.schedule=onecycle"])
    path = save_recipe(r, tmp_path / "recipe.yaml")
    assert load_recipe(path) == r


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_load_and_name_registered_models(path):
    from msseg_core.models import list_models

    r = load_recipe(path)
    assert r.model.name in list_models()
    assert "num_classes" not in r.model.args


def test_shipped_recipes_share_one_schedule():
    """The per-model from-scratch CamVid recipes differ in the model only, so their results compare side by
    side (the zoo recipes, which fine-tune ImageNet encoders, have their own)."""
    gpu = [p for p in RECIPES if not p.stem.endswith("_cpu") and not load_recipe(p).model.encoder_weights]
    assert len(gpu) >= 5
    ref = load_recipe(REPO / "config" / "train" / "camvid_mssanet.yaml").to_dict()
    for path in gpu:
        other = load_recipe(path).to_dict()
        assert {k: v for k, v in other.items() if k != "model"} == {k: v for k, v in ref.items() if k != "model"}, path


# ------------------------------------------------------------------------------------- train state
def test_train_state_round_trips_optimizer_scheduler_scaler_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor("poly", 100, 5))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(3):
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
        sched.step()
    random.seed(5)
    np.random.seed(6)
    state = {"epoch": 3, "best_miou": float("-inf"), "nan": float("nan"), "tuple": (1, "a", (2.5,)),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
             "rng": rng_state(), "int_keys": {0: "a", 7: [1, 2]}}
    path = save_train_state(tmp_path / "state.safetensors", state)
    assert load_file(str(path))  # a plain safetensors file
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed
    back = load_train_state(path)
    assert back["epoch"] == 3 and back["best_miou"] == float("-inf") and math.isnan(back["nan"])
    assert back["tuple"] == (1, "a", (2.5,)) and back["int_keys"] == {0: "a", 7: [1, 2]}
    assert back["scheduler"] == sched.state_dict()
    ref = opt.state_dict()
    assert back["optimizer"]["param_groups"] == ref["param_groups"]
    for k, st in ref["state"].items():
        for name, value in st.items():
            torch.testing.assert_close(back["optimizer"]["state"][k][name], value)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])  # loads into a live optimizer
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(back["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2]
    torch.testing.assert_close(expected[2], again[2])


def test_train_state_rejects_other_files(tmp_path, tiny_checkpoint):
    from msseg_core.training.state import TrainStateError

    with pytest.raises(TrainStateError, match="not an msseg training state"):
        load_train_state(tiny_checkpoint)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(TrainStateError, match="cannot read"):
        load_train_state(tmp_path / "junk.safetensors")
    with pytest.raises(TrainStateError, match="not found"):
        load_train_state(tmp_path / "none.safetensors")


# ---------------------------------------------------------------------------------- mfb, schedules
def test_mfb_weights_on_hand_made_labels():
    # 3 classes. Image A (4 labelled px): class 0 x3, class 1 x1, plus 2 void.  Image B (4 px): class 1 x2, 2 x2.
    a = np.array([[0, 0, 0, 1, 255, 255]], dtype=np.uint8)
    b = np.array([[1, 1], [2, 2]], dtype=np.uint8)
    w = mfb_weights([a, b], 3)
    # freq0 = 3/4 (only A has 0); freq1 = 3/8 (both images, 8 labelled px); freq2 = 2/4.  median = 1/2.
    np.testing.assert_allclose(w, [0.5 / 0.75, 0.5 / 0.375, 0.5 / 0.5])
    # a class that never occurs gets a neutral weight; labels beyond the classes are an error
    np.testing.assert_allclose(mfb_weights([a], 3), [np.median([0.75, 0.25]) / 0.75, 0.5 / 0.25, 1.0])
    with pytest.raises(ValueError, match="outside"):
        mfb_weights([np.array([[3]], dtype=np.uint8)], 3)


def test_schedules_warm_up_then_decay_and_can_be_re_anchored():
    poly = lr_factor("poly", total_steps=100, warmup_steps=10)
    assert poly(0) == pytest.approx(0.1) and poly(9) == pytest.approx(1.0)
    assert poly(10) == pytest.approx(1.0) and poly(55) == pytest.approx(0.5 ** 0.9) and poly(100) == 0.0
    one = lr_factor("onecycle", total_steps=100, warmup_steps=30)
    assert one(0) == pytest.approx(1 / 25) and one(30) == pytest.approx(1.0) and one(100) == pytest.approx(1 / 25e4)
    assert all(one(s) <= one(s + 1) for s in range(30)) and all(one(s) >= one(s + 1) for s in range(30, 100))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly)
    for _ in range(37):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, poly)
    set_schedule_step(sched2, 37)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr()) and sched2.last_epoch == 37


# ------------------------------------------------------------------------------------- real runs
TINY_RECIPE = """
model: {name: mssanet, args: {width: 0.0625, num_pools: 3}}
data: {root: DATA, crop_size: [32, 48], eval_size: [32, 48], scale_range: [0.75, 1.25], pipeline: PIPELINE,
       workers: 0}
optim: {name: adamw, lr: 0.03, schedule: poly, warmup_epochs: 0.5}
train: {epochs: EPOCHS, batch_size: 4, val_batch_size: 4, class_weighting: mfb, device: cpu, seed: 3}
"""


def tiny_recipe(folder: Path, data: Path, epochs: int, pipeline: str = "gpu_resident") -> Path:
    path = folder / f"tiny_{pipeline}_{epochs}.yaml"
    path.write_text(TINY_RECIPE.replace("DATA", str(data)).replace("EPOCHS", str(epochs))
                    .replace("PIPELINE", pipeline))
    return path


@pytest.mark.parametrize("pipeline", ["gpu_resident", "loader"])
def test_jitter_strength_reaches_the_training_batches(tmp_path, camvid_root, pipeline):
    """data.jitter is the photometric strength both pipelines apply: 0 gives the unjittered batch,
    and a stronger jitter moves pixels further from it."""
    from msseg_core.data import build_dataset
    from msseg_core.training.batches import TrainBatches
    from msseg_core.training.distributed import Dist

    def first_batch(*overrides: str) -> torch.Tensor:
        recipe = load_recipe(tiny_recipe(tmp_path, camvid_root, 1, pipeline),
                             ["data.workers=0", "data.hflip=false", "data.scale_range=[1.0, 1.0]",
                              "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.5, 0.5, 0.5]", *overrides])
        dataset = build_dataset("camvid", camvid_root, "train")
        torch.manual_seed(0)  # the loader pipeline's transforms draw from torch's global generator
        images, _ = next(iter(TrainBatches(dataset, recipe, Dist(0, 1, 0, torch.device("cpu"))).epoch(0)))
        return images

    plain = first_batch("data.photometric=false")
    assert torch.equal(first_batch("data.jitter=0.0"), plain)
    moved = [(first_batch(f"data.jitter={j}") - plain).abs().mean().item() for j in (0.1, 0.6)]
    assert 0 < moved[0] < moved[1]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, camvid_root):
    """One real 5-epoch run through fit(): (run folder, the returned model)."""
    folder = tmp_path_factory.mktemp("run")
    recipe = load_recipe(tiny_recipe(folder, camvid_root, 5))
    model = train_mod.fit(recipe, folder / "out", quiet=True)
    return folder / "out", model


def test_training_learns(trained):
    out, _ = trained
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr", "seconds"]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.7 * losses[0], losses
    miou = float(rows[-1]["val_miou"])
    assert miou > 2.5 / 11, f"val mIoU {miou:.3f} is not well above chance (1/11)"
    assert float(rows[-1]["lr"]) == 0.0  # poly decays to zero at the last step


def test_run_folder_holds_checkpoints_logs_and_recipe(trained):
    out, _ = trained
    for name in ("last.safetensors", "best.safetensors", "train_state.safetensors", "recipe.yaml",
                 "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(out.glob(".*.tmp"))
    from msseg_core.checkpoint import load_meta
    from msseg_core.classes import CAMVID

    meta = load_meta(out / "last.safetensors")
    assert meta.class_names == list(CAMVID.names) and meta.road_classes == ["Road"]
    assert meta.input_size == [32, 48] and meta.dataset == "camvid"
    assert meta.recipe == load_recipe(out / "recipe.yaml").to_dict()
    assert meta.metrics["epoch"] == 5 and set(meta.metrics["per_class_iou"]) == set(CAMVID.names)
    best = load_meta(out / "best.safetensors").metrics
    rows = read_csv(out / "metrics.csv")
    top = max(rows, key=lambda r: float(r["val_miou"]))
    assert best["epoch"] == int(top["epoch"]) and best["val_miou"] == pytest.approx(float(top["val_miou"]))


def test_checkpoint_alone_rebuilds_the_trained_model(trained, camvid_root):
    from msseg_core.data import build_dataset
    from msseg_core.runtime.segmenter import Segmenter

    out, model = trained
    seg = Segmenter.from_checkpoint(out / "last.safetensors", device="cpu", backend="torch", threads=1)
    image, _ = build_dataset("camvid", camvid_root, "val")[0]
    x = torch.rand(2, 3, 32, 48)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(seg.model(x), model(x))
    labels = seg.predict(image)
    assert labels.shape == image.shape[:2] and labels.max() < 11
    best = Segmenter.from_checkpoint(out / "best.safetensors", device="cpu", backend="torch", threads=1)
    assert best.predict(image).shape == image.shape[:2] and best.input_size == (32, 48)


def test_val_miou_is_what_msseg_eval_reports(trained, camvid_root):
    """Validation goes through the Segmenter at the eval size, like msseg-eval."""
    from msseg_core.data import build_dataset
    from msseg_core.evaluation.evaluate import evaluate_split
    from msseg_core.runtime.segmenter import Segmenter

    out, _ = trained
    seg = Segmenter.from_checkpoint(out / "last.safetensors", device="cpu", backend="torch", fuse=False, threads=1)
    cm = evaluate_split(seg, build_dataset("camvid", camvid_root, "val"))
    assert cm.miou == pytest.approx(float(read_csv(out / "metrics.csv")[-1]["val_miou"]), abs=1e-9)


def test_fresh_run_refuses_an_existing_run_folder(trained, capsys):
    out, _ = trained
    assert train_cli.main(["--config", str(out / "recipe.yaml"), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # --resume of a finished run does nothing and says so
    assert train_cli.main(["--resume", "--out", str(out)]) == 0
    assert "already trained 5 of 5 epochs" in capsys.readouterr().out


def test_init_from_starts_a_new_run_from_a_trained_checkpoint(trained, camvid_root, tmp_path, capsys):
    """Fine-tuning: the network starts as the checkpoint's, and what it learned carries over."""
    out, _ = trained
    ckpt = out / "last.safetensors"
    recipe = load_recipe(tiny_recipe(tmp_path, camvid_root, 1),
                         [f"model.init_from={ckpt}", "optim.lr=1e-5", "optim.warmup_epochs=0"])
    start = network.build_network(recipe, 11).state_dict()
    assert all(torch.equal(start[k], v) for k, v in weights(ckpt).items())
    train_mod.fit(recipe, tmp_path / "ft", quiet=True)
    tuned, scratch = read_csv(tmp_path / "ft" / "metrics.csv"), read_csv(out / "metrics.csv")
    assert float(tuned[0]["val_miou"]) > float(scratch[0]["val_miou"]) + 0.05, (tuned, scratch)
    assert float(tuned[0]["val_miou"]) >= 0.9 * float(scratch[-1]["val_miou"]), (tuned, scratch)

    # A checkpoint of another network is a one-line recipe error, before any training.
    config = tiny_recipe(tmp_path, camvid_root, 1)
    assert train_cli.main(["--config", str(config), "--set", f"model.init_from={ckpt}",
                           "--set", "model.args.width=0.125", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.init_from" in err and "width" in err and not (tmp_path / "bad" / "last.safetensors").exists()


def test_resume_without_a_training_state_is_a_clear_error(trained, tmp_path, capsys):
    import shutil

    out, _ = trained
    for name in ("last.safetensors", "recipe.yaml"):
        shutil.copy(out / name, tmp_path / name)
    assert train_cli.main(["--resume", "--out", str(tmp_path), "--quiet"]) == 2
    assert "training state not found" in capsys.readouterr().err


class Interrupt(Exception):
    """Stands in for a SIGKILL at a chosen point of an epoch."""


def interrupt_at(monkeypatch, epoch: int, before_state: bool) -> None:
    real = train_mod.save_train_state

    def save(path, state):
        if state["epoch"] == epoch and before_state:
            raise Interrupt
        real(path, state)
        if state["epoch"] == epoch:
            raise Interrupt

    monkeypatch.setattr(train_mod, "save_train_state", save)


@pytest.mark.parametrize("pipeline", ["gpu_resident", "loader"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, camvid_root, monkeypatch, pipeline):
    config = tiny_recipe(tmp_path, camvid_root, 2, pipeline)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli.main(["--config", str(config), "--out", str(straight), "--quiet"]) == 0
    with monkeypatch.context() as m:
        interrupt_at(m, 1, before_state=False)
        with pytest.raises(Interrupt):
            train_cli.main(["--config", str(config), "--out", str(resumed), "--quiet"])
    assert load_train_state(resumed / "train_state.safetensors")["epoch"] == 1
    # no --config: the run's own recipe.yaml
    assert train_cli.main(["--resume", "--out", str(resumed), "--quiet"]) == 0
    a, b = weights(straight / "last.safetensors"), weights(resumed / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    rows_a, rows_b = read_csv(straight / "metrics.csv"), read_csv(resumed / "metrics.csv")
    assert [r["epoch"] for r in rows_b] == ["1", "2"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "val_loss", "val_miou", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-7), key


def test_resume_after_a_kill_between_checkpoint_and_state(tmp_path, camvid_root, monkeypatch, capsys):
    """last.safetensors already holds epoch 2 but the state still epoch 1: nothing is lost or redone."""
    config = tiny_recipe(tmp_path, camvid_root, 3)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at(m, 2, before_state=True)
        with pytest.raises(Interrupt):
            train_cli.main(["--config", str(config), "--out", str(out), "--quiet"])
    assert load_train_state(out / "train_state.safetensors")["epoch"] == 1
    assert train_cli.main(["--config", str(config), "--resume", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "one epoch older" in text and "epoch 3/3" in text and "epoch 2/3" not in text.split("resuming")[-1]
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1", "2", "3"]
    assert load_train_state(out / "train_state.safetensors")["epoch"] == 3


def test_cli_reports_recipe_errors_in_one_line(tmp_path, capsys):
    config = tmp_path / "r.yaml"
    config.write_text("train: {epochs: 2}\n")
    assert train_cli.main(["--config", str(config), "--set", "train.epochs=two", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msseg-train: error:") and "train.epochs expects an integer, got 'two'" in err
    assert train_cli.main(["--config", str(config), "--set", "data.root=/x", "--print-recipe"]) == 0
    assert "root: /x" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()
    assert train_cli.main(["--resume"]) == 2
