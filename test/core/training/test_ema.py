"""The weights' moving average (train.ema_decay): its arithmetic, and real tiny runs that validate and save it,
leave the trained weights' trajectory untouched, and resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from msseg_core.checkpoint import load_meta
from msseg_core.cli import train as train_cli
from msseg_core.cli.evaluate import main as evaluate
from msseg_core.training import train as train_mod
from msseg_core.training.ema import decay_at, weight_ema
from msseg_core.training.recipe import RecipeError, load_recipe
from msseg_core.training.state import load_train_state

RECIPE = """
model: {name: mssanet, args: {width: 0.0625, num_pools: 3}}
data: {root: DATA, crop_size: [32, 48], eval_size: [32, 48], scale_range: [0.75, 1.25], workers: 0}
optim: {name: adamw, lr: 0.03, schedule: poly, warmup_epochs: 0.5}
train: {epochs: 2, batch_size: 4, val_batch_size: 4, class_weighting: mfb, device: cpu, seed: 3, ema_decay: EMA}
"""


def recipe_file(folder: Path, data: Path, ema: float) -> Path:
    path = folder / f"ema_{ema}.yaml"
    path.write_text(RECIPE.replace("DATA", str(data)).replace("EMA", str(ema)))
    return path


def train(config: Path, out: Path, *extra: str) -> None:
    assert train_cli.main(["--config", str(config), "--out", str(out), "--quiet", *extra]) == 0


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------- arithmetic
def test_the_average_follows_the_warm_up_rule_over_parameters_and_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = weight_ema(net, 0.9)
    states = []
    for step in range(30):
        with torch.no_grad():
            for t in list(net.parameters()) + [net[1].running_mean, net[1].running_var]:
                t.copy_(torch.randn_like(t))
            net[1].num_batches_tracked.fill_(step + 1)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        ema.update_parameters(net)
    expected = dict(states[0])  # the first update copies
    for step, state in enumerate(states[1:]):
        d = decay_at(0.9, step)
        expected = {k: (d * expected[k] + (1 - d) * v if v.is_floating_point() else v) for k, v in state.items()}
    got = ema.module.state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)
    assert int(got["1.num_batches_tracked"]) == 30  # a counter is copied, not averaged
    assert decay_at(0.9, 0) == pytest.approx(0.1) and decay_at(0.9, 1000) == 0.9  # warm-up, then the decay


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="ema decay must be in"):
        weight_ema(nn.Linear(1, 1), decay)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_the_recipe_refuses_a_decay_outside_0_1(value):
    with pytest.raises(RecipeError, match=r"train.ema_decay must be in \[0, 1\)"):
        load_recipe(None, [f"train.ema_decay={value}"])


# ------------------------------------------------------------------------------------------- real runs
def test_a_run_ships_the_average_and_keeps_the_trained_weights_unchanged(tmp_path, camvid_root):
    """The average changes what is validated and saved, not how the network trains: the run's
    last_raw.safetensors is the run without averaging, weight for weight."""
    plain, averaged = tmp_path / "plain", tmp_path / "ema"
    train(recipe_file(tmp_path, camvid_root, 0.0), plain)
    train(recipe_file(tmp_path, camvid_root, 0.9), averaged)
    assert not (plain / train_mod.RAW).exists()
    assert_same(load_file(str(averaged / train_mod.RAW)), load_file(str(plain / train_mod.LAST)))
    shipped, raw = load_file(str(averaged / train_mod.LAST)), load_file(str(averaged / train_mod.RAW))
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.allclose(raw[k], shipped[k])]
    assert len(moved) > len(raw) // 2, "the saved network is not the average"
    # an average that forgets at once is the trained weights themselves: it is updated every step
    forgetful = tmp_path / "forgetful"
    train(recipe_file(tmp_path, camvid_root, 1e-9), forgetful)
    assert_same(load_file(str(forgetful / train_mod.LAST)), load_file(str(plain / train_mod.LAST)))
    # the validation recorded in last.safetensors is the average's: msseg-eval's figure for that file
    report = tmp_path / "eval.json"
    assert evaluate(["--checkpoint", str(averaged / train_mod.LAST), "--data-root", str(camvid_root), "--split", "val",
                     "--device", "cpu", "--backend", "torch", "--quiet", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["miou"] == pytest.approx(
        load_meta(averaged / train_mod.LAST).metrics["val_miou"], abs=1e-6)
    assert "not averaged" in load_meta(averaged / train_mod.RAW).metrics["weights"]


def test_an_interrupted_averaged_run_resumes_exactly(tmp_path, camvid_root, monkeypatch):
    config = recipe_file(tmp_path, camvid_root, 0.9)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config, straight)
    real = train_mod.save_train_state

    class Stop(Exception):
        pass

    def save_then_stop(path, state):
        real(path, state)
        raise Stop

    with monkeypatch.context() as m:
        m.setattr(train_mod, "save_train_state", save_then_stop)
        with pytest.raises(Stop):
            train(config, resumed)
    assert load_train_state(resumed / train_mod.STATE)["epoch"] == 1
    assert train_cli.main(["--resume", "--out", str(resumed), "--quiet"]) == 0
    for name in (train_mod.LAST, train_mod.RAW):
        assert_same(load_file(str(resumed / name)), load_file(str(straight / name)))


def test_resuming_with_the_average_switched_is_a_clear_error(tmp_path, camvid_root, capsys):
    out = tmp_path / "run"
    train(recipe_file(tmp_path, camvid_root, 0.9), out)
    code = train_cli.main(["--config", str(recipe_file(tmp_path, camvid_root, 0.0)), "--resume", "--out", str(out),
                           "--set", "train.epochs=3", "--quiet"])
    assert code == 2
    assert "disagree on train.ema_decay" in capsys.readouterr().err
