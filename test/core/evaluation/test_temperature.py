"""Calibrated confidence: the fitted temperature, ECE, the Segmenter applying it, and msseg-calibrate."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from msseg_core.checkpoint import load_checkpoint, load_meta, stored_half
from msseg_core.classes import IGNORE_INDEX
from msseg_core.cli.calibrate import main
from msseg_core.evaluation.temperature import Reliability, fit_temperature
from msseg_core.runtime.segmenter import Segmenter


def sampled(true_t: float, n: int = 20000, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of an over-confident model: labels drawn from softmax(z), logits z * true_t."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * true_t, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fit_recovers_the_temperature_of_an_overconfident_model(true_t):
    logits, labels = sampled(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_ece_drops_when_the_fitted_temperature_is_applied():
    logits, labels = sampled(3.0)
    t = fit_temperature(logits, labels)
    img, lab = logits.T.reshape(1, -1, 100, 200), labels.reshape(1, 100, 200).clone()
    lab[0, :5] = IGNORE_INDEX  # never counted
    before, after = Reliability(), Reliability()
    before.update(img, lab)
    after.update(img, lab, t)
    assert before.count.sum() == after.count.sum() == 19000
    assert after.ece < 0.02 < before.ece
    acc, conf = after.accuracy(), after.mean_confidence()
    full = after.count > 500
    assert np.abs(acc[full] - conf[full]).max() < 0.05  # calibrated: right as often as it says


def test_fit_rejects_empty_input():
    with pytest.raises(ValueError, match="P x C"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0))


def test_segmenter_divides_logits_by_the_checkpoint_temperature(tiny_checkpoint):
    model, meta = load_checkpoint(tiny_checkpoint)
    frame = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    plain = Segmenter(model, meta, device="cpu", backend="torch")
    meta2 = load_meta(tiny_checkpoint)
    meta2.temperature = 2.5
    hot = Segmenter(load_checkpoint(tiny_checkpoint)[0], meta2, device="cpu", backend="torch")
    a, b = plain.segment(frame), hot.segment(frame)
    assert np.array_equal(a["labels"], b["labels"])  # argmax does not depend on T
    p1, p2 = plain.probabilities(frame), hot.probabilities(frame)
    logp1 = torch.log_softmax(torch.log(torch.from_numpy(p1)) / 2.5, 0).exp().numpy()
    np.testing.assert_allclose(p2, logp1, atol=1e-4)
    assert b["confidence"].mean() < a["confidence"].mean()  # softer


@pytest.mark.slow
def test_msseg_calibrate_writes_the_temperature_into_a_loadable_checkpoint(tmp_path, tiny_checkpoint, capsys):
    from fake_datasets import write_fake_camvid

    write_fake_camvid(tmp_path / "camvid", "val", n=3, size=(32, 48), seed=1)
    out = tmp_path / "calibrated.safetensors"
    rc = main(["--checkpoint", str(tiny_checkpoint), "--data-root", str(tmp_path / "camvid"), "--split", "val",
               "--out", str(out), "--png", str(tmp_path / "rel.png"), "--json", str(tmp_path / "cal.json"),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    meta = load_meta(out)
    report = json.loads((tmp_path / "cal.json").read_text())
    assert meta.temperature == pytest.approx(report["temperature"], rel=1e-3) and meta.temperature != 1.0
    assert meta.metrics["calibration"]["ece_after"] <= meta.metrics["calibration"]["ece_before"] + 1e-9
    assert report["pixels_scored"] > 0 and (tmp_path / "rel.png").stat().st_size > 1000
    assert stored_half(out) == stored_half(tiny_checkpoint)
    model, _ = load_checkpoint(out)
    ref, _ = load_checkpoint(tiny_checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
    assert main(["--checkpoint", str(tmp_path / "none.safetensors"), "--data-root", str(tmp_path), "--out",
                 str(out)]) == 2
    # --half: the zoo's fp16 storage, same temperature, weights equal to fp16 precision
    small = tmp_path / "half.safetensors"
    assert main(["--checkpoint", str(out), "--data-root", str(tmp_path / "camvid"), "--split", "val",
                 "--out", str(small), "--half", "--device", "cpu"]) == 0
    assert stored_half(small) and small.stat().st_size < out.stat().st_size
    assert load_meta(small).temperature == pytest.approx(meta.temperature, rel=0.05)
    halved, _ = load_checkpoint(small)
    for a, b in zip(halved.state_dict().values(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.half().float())


def test_msseg_calibrate_takes_the_temperature_of_the_train_only_sibling(tmp_path, tiny_checkpoint, capsys):
    """A model trained on train+val has no held-out split left: it takes the temperature fitted for the
    train-only run of its recipe, and its checkpoint says where that came from."""
    from fake_datasets import write_fake_camvid

    write_fake_camvid(tmp_path / "camvid", "val", n=3, size=(32, 48), seed=1)
    fitted = tmp_path / "train_only.safetensors"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data-root", str(tmp_path / "camvid"), "--out", str(fitted),
                 "--device", "cpu"]) == 0
    out = tmp_path / "trainval.safetensors"
    assert main(["--checkpoint", str(tiny_checkpoint), "--temperature-from", str(fitted), "--out", str(out),
                 "--half"]) == 0
    meta, donor = load_meta(out), load_meta(fitted)
    assert meta.temperature == donor.temperature != 1.0 and stored_half(out)
    assert meta.metrics["calibration"] == {**donor.metrics["calibration"], "transferred_from": str(fitted)}
    assert main(["--checkpoint", str(tiny_checkpoint), "--temperature-from", str(tiny_checkpoint),
                 "--out", str(tmp_path / "x.safetensors")]) == 2  # an uncalibrated donor
    assert "not calibrated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tiny_checkpoint), "--out", str(out)])  # neither data nor a donor


def test_msseg_calibrate_deploys_a_checkpoint_at_another_input_fitted_there(tmp_path, tiny_checkpoint, capsys):
    """--input-size: the copy runs at the new network input wherever it is loaded, its temperature is the one
    fitted at that input (not at the checkpoint's own), and a temperature is only transferred between the
    same inputs."""
    from fake_datasets import write_fake_camvid

    from msseg_core.data import build_dataset
    from msseg_core.data.datasets import read_rgb
    from msseg_core.evaluation.temperature import fit_split_temperature

    root = tmp_path / "camvid"
    write_fake_camvid(root, "val", n=3, size=(32, 48), seed=1)
    own = list(load_meta(tiny_checkpoint).input_size)
    plain = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch")
    for frame in sorted((root / "val").glob("*.png")):  # labels = its own answers at its own input: T differs
        labels = plain.predict(read_rgb(frame)).astype(np.uint8)  # between that input and another
        cv2.imwrite(str(root / "valannot" / frame.name), labels)
    wide = [own[0], own[1] * 2]
    out = tmp_path / "wide.safetensors"
    assert main(["--checkpoint", str(tiny_checkpoint), "--data-root", str(root), "--out", str(out),
                 "--input-size", f"{wide[0]}x{wide[1]}", "--device", "cpu"]) == 0, capsys.readouterr().err
    meta = load_meta(out)
    assert meta.input_size == wide and meta.metrics["calibration"]["input_size"] == wide
    assert list(Segmenter.from_checkpoint(out, device="cpu", backend="torch").input_size) == wide
    dataset = build_dataset("camvid", root, "val")
    at = {tuple(size): fit_split_temperature(Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch",
                                                                       input_size=tuple(size)), dataset).temperature
          for size in (own, wide)}
    assert at[tuple(own)] != pytest.approx(at[tuple(wide)], rel=1e-3)  # the input changes the logits' scale
    assert meta.temperature == pytest.approx(at[tuple(wide)], rel=1e-3)

    moved = tmp_path / "moved.safetensors"
    args = ["--checkpoint", str(tiny_checkpoint), "--temperature-from", str(out), "--out", str(moved)]
    assert main(args) == 2  # fitted at the wide input, the checkpoint runs at its own
    err = capsys.readouterr().err
    assert f"calibrated at a {wide[0]}x{wide[1]} network input" in err and f"--input-size {wide[0]}x{wide[1]}" in err
    assert not moved.exists()
    assert main([*args, "--input-size", f"{wide[0]}x{wide[1]}"]) == 0
    assert load_meta(moved).input_size == wide and load_meta(moved).temperature == meta.temperature
