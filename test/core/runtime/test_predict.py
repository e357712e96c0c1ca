"""msseg-predict: a colour mask and an overlay per image, at the image's size, from Segmenter.segment."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from msseg_core.cli.predict import main
from msseg_core.runtime.segmenter import Segmenter

CLI = ["--device", "cpu", "--backend", "torch", "--threads", "1"]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (21, 17), dtype=np.uint8)).save(folder / "grey.png")  # mode L
    Image.fromarray(rng.integers(0, 256, (16, 24, 4), dtype=np.uint8)).save(folder / "alpha.png")  # RGBA
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "single.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(single)
    return folder, single, rgb


def test_writes_mask_and_overlay_per_image_at_its_size(tmp_path, tiny_checkpoint, images):
    folder, single, rgb = images
    out = tmp_path / "out"
    assert main([str(folder), str(single), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--alpha", "0.3", *CLI]) == 0
    sizes = {"a": (44, 30), "grey": (17, 21), "alpha": (24, 16), "single": (52, 40)}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{k}.png" for s in sizes for k in ("mask", "overlay"))
    for stem, size in sizes.items():
        for kind in ("mask", "overlay"):
            with Image.open(out / f"{stem}_{kind}.png") as im:
                assert im.size == size and im.mode == "RGB", (stem, kind)
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", threads=1)
    mask = np.asarray(Image.open(out / "a_mask.png"))
    np.testing.assert_array_equal(mask, seg.palette[seg.predict(rgb)])
    overlay = np.asarray(Image.open(out / "a_overlay.png")).astype(np.float64)
    expected = np.round(0.7 * rgb + 0.3 * mask.astype(np.float64))
    assert np.abs(overlay - expected).max() <= 1


def test_errors(tmp_path, tiny_checkpoint, images, capsys):
    folder, single, _ = images
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "missing.png"), "--checkpoint", str(tiny_checkpoint), "--out", out, *CLI]) == 2
    assert "no such image or folder" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(other / "a.png")
    assert main([str(folder), str(other / "a.png"), "--checkpoint", str(tiny_checkpoint), "--out", out, *CLI]) == 2
    assert "would write the same outputs" in capsys.readouterr().err
    assert main([str(single), "--checkpoint", str(tmp_path / "none.safetensors"), "--out", out, *CLI]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(single), "--out", out, "--alpha", "1.5"])
