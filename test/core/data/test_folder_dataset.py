"""Your own data without ROS: the "folder" dataset (classes.yaml, index and colour labels, splits), `msseg-data
check` on tiny broken folders (each problem one line naming its file, exit 1, nothing written), and fine-tuning
from a checkpoint with another class table (`--init`: what is kept, what is re-initialised, another
architecture refused in one line, an interrupted run resumed without its init file)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fake_datasets import fake_image, fake_street_label
from helpers_ddp import free_port
from paths import REPO
from safetensors.torch import load_file

from msseg_core.cli import data as data_cli
from msseg_core.cli import train as train_cli
from msseg_core.data import build_dataset
from msseg_core.data.datasets import DatasetError
from msseg_core.data.folder import check_folder, parse_class_table, read_class_table, write_class_table
from msseg_core.training import network
from msseg_core.training import train as train_mod
from msseg_core.training.recipe import RecipeError, load_recipe, resolve_recipe

NAMES = ["road", "sidewalk", "obstacle", "other"]
PALETTE = [(128, 64, 128), (244, 35, 232), (220, 20, 60), (70, 70, 70)]
EXTRA_OBSTACLE = (64, 0, 128)  # a second colour of 'obstacle' in colour labels (label_colors)
TABLE = """classes:
  - {name: road, color: [128, 64, 128], drivable: true}
  - {name: sidewalk, color: [244, 35, 232]}
  - {name: obstacle, color: [220, 20, 60], label_colors: [[64, 0, 128]]}
  - {name: other, color: [70, 70, 70]}
"""
# CamVid 11 classes -> road / sidewalk / obstacle / other (255 stays void)
CAMVID_TO_4 = np.full(256, 255, np.uint8)
for _camvid, _new in {3: 0, 4: 1, 2: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 2, 0: 3, 1: 3, 5: 3}.items():
    CAMVID_TO_4[_camvid] = _new


def write_png(path: Path, array: np.ndarray) -> None:
    """RGB (HxWx3) or single-channel uint8 as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array[:, :, ::-1] if array.ndim == 3 else array)


def colour_label(ids: np.ndarray, extra_band: bool = True) -> np.ndarray:
    """ids -> the labeller's colour PNG content: palette colours, void black, some obstacle pixels in the
    class's second colour."""
    rgb = np.zeros((*ids.shape, 3), np.uint8)
    for k, c in enumerate(PALETTE):
        rgb[ids == k] = c
    if extra_band:
        band = (np.arange(ids.shape[1]) % 2 == 0)[None, :] & (ids == 2)
        rgb[band] = EXTRA_OBSTACLE
    return rgb


def write_folder(root: Path, n: int = 6, size: tuple[int, int] = (32, 48), seed: int = 0,
                 splits: dict[str, list[int]] | None = None, table: str = TABLE) -> dict[str, np.ndarray]:
    """A valid folder dataset: even frames with index labels, odd ones with colour labels; returns the
    class ids each frame's label means (255 = void). splits: frame numbers per split file (None: none)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        ids = CAMVID_TO_4[fake_street_label(rng, size)]
        name = f"f{i}"
        write_png(root / "images" / f"{name}.png", fake_image(rng, ids, PALETTE))
        write_png(root / "labels" / f"{name}.png", ids if i % 2 == 0 else colour_label(ids))
        truth[name] = ids
    (root / "classes.yaml").write_text(table)
    for split, frames in (splits or {}).items():
        (root / f"{split}.txt").write_text("".join(f"f{i}\n" for i in frames))
    return truth


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------- dataset
def test_folder_dataset_reads_index_and_colour_labels_with_its_own_classes(tmp_path):
    truth = write_folder(tmp_path, n=6, splits={"train": [0, 1, 2, 3], "val": [4, 5]})
    train, val = build_dataset("folder", tmp_path, "train"), build_dataset("folder", tmp_path, "val")
    assert train.names == ["f0", "f1", "f2", "f3"] and val.names == ["f4", "f5"]
    assert list(train.classes.names) == NAMES and list(train.classes.palette) == PALETTE
    assert train.classes.road == ("road",) and train.classes == val.classes
    for ds in (train, val):
        for i, name in enumerate(ds.names):
            image, mask = ds[i]
            assert image.dtype == np.uint8 and image.shape == (32, 48, 3)
            np.testing.assert_array_equal(mask, truth[name])  # index PNG and colour PNG alike
    assert (truth["f1"] == 255).any() and (truth["f1"] == 2).any()  # void and the second colour exercised
    joined = build_dataset("folder", tmp_path, "train+val")
    assert len(joined) == 6


def test_without_split_files_the_last_fifth_is_val(tmp_path):
    write_folder(tmp_path, n=10)
    assert build_dataset("folder", tmp_path, "val").names == ["f8", "f9"]
    assert build_dataset("folder", tmp_path, "train").names == [f"f{i}" for i in range(8)]
    (tmp_path / "classes.yaml").write_text(TABLE + "val_fraction: 0.5\n")
    assert len(build_dataset("folder", tmp_path, "val")) == 5
    (tmp_path / "train.txt").write_text("f0\n")  # one split file without the other: ambiguous
    with pytest.raises(DatasetError, match="val.txt does not"):
        build_dataset("folder", tmp_path, "val")


def test_dataset_refuses_unknown_values_by_file(tmp_path):
    write_folder(tmp_path, n=4, splits={"train": [0, 1], "val": [2, 3]})
    bad = np.zeros((32, 48), np.uint8)
    bad[0, :5] = 7
    write_png(tmp_path / "labels" / "f0.png", bad)
    ds = build_dataset("folder", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"f0.png: label values \{7\} in 5 pixels are not in the class table"):
        ds[0]
    colour = colour_label(np.zeros((32, 48), np.uint8))
    colour[3, 3] = (1, 2, 3)
    write_png(tmp_path / "labels" / "f1.png", colour)
    with pytest.raises(DatasetError, match=r"f1.png: 1 pixels have colours that are not in the palette.*\(1,2,3\) x 1"):
        ds[1]


def test_palette_png_labels_are_read_as_colours(tmp_path):
    """Labelling tools write paletted PNGs (mode P): their colours are looked up like RGB labels."""
    from PIL import Image

    truth = write_folder(tmp_path, n=2, splits={"train": [0], "val": [1]})
    ids = truth["f0"]
    img = Image.fromarray(np.where(ids == 255, 4, ids).astype(np.uint8), mode="P")
    img.putpalette([c for rgb in [*PALETTE, (0, 0, 0)] for c in rgb])
    img.save(tmp_path / "labels" / "f0.png")
    np.testing.assert_array_equal(build_dataset("folder", tmp_path, "train")[0][1], ids)


@pytest.mark.parametrize("text, message", [
    ("classes: []\n", "non-empty list `classes:`"),
    ("classes:\n  - {name: a, color: [1, 2, 3], drivable: true}\n  - {name: a, color: [4, 5, 6]}\n",
     "'a': listed twice"),
    ("classes:\n  - {name: a, color: [1, 2, 300], drivable: true}\n", "'a': a colour is [r, g, b] with 0..255"),
    ("classes:\n  - {name: a, color: [1, 2, 3], drivable: true}\n  - {name: b, color: [1, 2, 3]}\n",
     "'b': colour [1, 2, 3] is already 'a'"),
    ("classes:\n  - {name: a, color: [1, 2, 3], drivable: true}\nvoid: 0\n", "void must be a label value 1..255"),
    ("classes:\n  - {name: a, colour: [1, 2, 3]}\n", "'a': unknown keys ['colour']"),
    ("classes:\n  - {name: a, color: [1, 2, 3], drivable: yes please}\n", "drivable must be true or false"),
    ("classes:\n  - {name: a, color: [1, 2, 3], drivable: true}\nlabels: rgb\n", "labels must be one of"),
    ("classes: [\n", "cannot read it as YAML"),
])
def test_class_table_errors_are_one_line_naming_the_file(tmp_path, text, message):
    (tmp_path / "classes.yaml").write_text(text)
    with pytest.raises(DatasetError) as err:
        parse_class_table(tmp_path)
    assert message in str(err.value) and "classes.yaml" in str(err.value) and "\n" not in str(err.value)


def test_class_table_round_trips_and_needs_a_drivable_class(tmp_path):
    write_folder(tmp_path, n=2)
    classes = read_class_table(tmp_path).classes
    out = tmp_path / "copy"
    write_class_table(out, classes)
    assert read_class_table(out).classes == classes
    (out / "classes.yaml").write_text(TABLE.replace(", drivable: true", ""))
    with pytest.raises(DatasetError, match="no class is drivable"):
        read_class_table(out)


# --------------------------------------------------------------------------------------------- check
def test_check_passes_a_good_folder_and_counts_pixels_and_images_per_class(tmp_path, capsys):
    truth = write_folder(tmp_path, n=6, splits={"train": [0, 1, 2, 3], "val": [4, 5]})
    before = snapshot(tmp_path)
    assert data_cli.main(["check", str(tmp_path), "--json", str(tmp_path.parent / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "error:" not in out and out.strip().endswith(": OK")
    report = check_folder(tmp_path).to_dict()
    for split, frames in (("train", ["f0", "f1", "f2", "f3"]), ("val", ["f4", "f5"])):
        stats = report["splits"][split]
        assert stats["images"] == len(frames)
        for k, name in enumerate(NAMES):
            assert stats["pixels"][name] == sum(int((truth[f] == k).sum()) for f in frames), (split, name)
            assert stats["images_per_class"][name] == sum(int((truth[f] == k).any()) for f in frames)
        assert stats["pixels"]["(void)"] == sum(int((truth[f] == 255).sum()) for f in frames)
        road = stats["pixels"]["road"]
        assert any(line.split()[:2] == ["road", str(road)] for line in out.splitlines()), out
    assert snapshot(tmp_path) == before  # check writes nothing into the folder


def test_check_names_every_problem_of_a_broken_folder_on_one_line_each(tmp_path, capsys):
    write_folder(tmp_path, n=8, splits={"train": [0, 1, 2, 3, 4, 5], "val": []})
    (tmp_path / "images" / "f0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # unreadable image
    ids = np.zeros((32, 48), np.uint8)
    ids[:2, :3] = 9
    write_png(tmp_path / "labels" / "f1.png", ids)  # unknown label id (6 pixels)
    colour = colour_label(np.zeros((32, 48), np.uint8))
    colour[5, 5] = (10, 200, 30)
    write_png(tmp_path / "labels" / "f2.png", colour)  # unknown colour
    write_png(tmp_path / "labels" / "f3.png", np.zeros((16, 48), np.uint8))  # size mismatch
    (tmp_path / "labels" / "f4.png").unlink()  # image without label
    (tmp_path / "images" / "f7.png").unlink()  # label without image
    with open(tmp_path / "train.txt", "a") as fh:
        fh.write("ghost\n")  # a split entry without an image
    before = snapshot(tmp_path)
    assert data_cli.main(["check", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    expected = {
        "images/f0.png: cannot decode image": "unreadable image",
        "labels/f1.png: label values {9} in 6 pixels are not in the class table": "unknown id",
        "labels/f2.png: 1 pixels have colours that are not in the palette of classes.yaml: (10,200,30) x 1":
            "unknown colour",
        "labels/f3.png: size 48x16 differs from its image images/f3.png 48x32": "size mismatch",
        "images/f4.png: no label labels/f4.png": "missing label",
        "labels/f7.png: no image images/f7.* for it": "missing image",
        "train.txt line 7: no image images/ghost.*": "split entry",
        "split 'val' is empty (val.txt lists no image)": "empty split",
    }
    for text, what in expected.items():
        hits = [line for line in errors if text in line]
        assert len(hits) == 1, (what, text, errors)
    assert len(errors) == len(expected), errors
    assert lines[-1].endswith(f": {len(expected)} problems")
    assert snapshot(tmp_path) == before


def test_check_refuses_a_class_table_without_a_drivable_class(tmp_path, capsys):
    write_folder(tmp_path, n=4, splits={"train": [0, 1], "val": [2, 3]}, table=TABLE.replace(", drivable: true", ""))
    assert data_cli.main(["check", str(tmp_path)]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "classes.yaml: no class is drivable" in errors[0], errors
    # and training on it stops before anything is written, in one line
    out = tmp_path.parent / "run_no_road"
    assert train_cli.main(["--config", str(REPO / "config/train/folder_finetune_cpu.yaml"), "--data-root",
                           str(tmp_path), "--out", str(out), "--quiet", "--set", "train.device=cpu",
                           "--set", "model.init_from="]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("msseg-train: error:") and "no class is drivable" in err and "\n" not in err
    assert not out.exists()


def test_check_of_a_missing_folder_or_table(tmp_path, capsys):
    assert data_cli.main(["check", str(tmp_path / "nope")]) == 1
    assert "no such folder" in capsys.readouterr().out
    write_folder(tmp_path, n=2)
    (tmp_path / "classes.yaml").unlink()
    assert data_cli.main(["check", str(tmp_path)]) == 1
    assert "error: classes.yaml: missing" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- fine-tuning
TINY_FINETUNE = ["--set", "data.crop_size=[32,48]", "--set", "data.eval_size=[32,48]", "--set",
                 "data.scale_range=[0.75,1.25]", "--set", "train.batch_size=2", "--set", "train.val_batch_size=2",
                 "--set", "train.threads=1", "--set", "train.device=cpu", "--set", "train.channels_last=off",
                 "--set", "train.epochs=3", "--set", "optim.freeze_encoder_epochs=1", "--set", "optim.lr=0.01",
                 "--quiet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_folder(root, n=8, splits={"train": [0, 1, 2, 3, 4, 5], "val": [6, 7]})
    return root


def test_init_keeps_what_fits_and_reinitialises_the_classifier(folder, tiny_checkpoint, capsys):
    recipe = load_recipe(REPO / "config/train/folder_finetune_cpu.yaml",
                         [f"model.init_from={tiny_checkpoint}", f"data.root={folder}"])
    resolved = resolve_recipe(recipe)
    assert resolved.model.name == "mssanet" and resolved.model.args == {"width": 0.0625}  # the checkpoint's
    lines: list[str] = []
    net = network.build_network(recipe, 4, NAMES, log=lines.append)
    trained = load_file(str(tiny_checkpoint))
    state = net.state_dict()
    fresh = [k for k in state if trained[k].shape != state[k].shape]  # in the network's order
    assert fresh and all(k.startswith(("score", "upscore")) for k in fresh), fresh
    for k, v in state.items():
        if k not in fresh:
            assert torch.equal(v, trained[k]), k
    assert lines == [f"init from {tiny_checkpoint}: {len(state) - len(fresh)} of {len(state)} tensors kept; "
                     f"re-initialised: {', '.join(fresh)} (classes differ: 11 -> 4)"]
    # the new classifier starts near uniform: ln(4) loss, not a confident wrong guess
    with torch.no_grad():
        logits = net.eval()(torch.rand(1, 3, 32, 48))
    assert logits.std() < 0.5
    # same number of classes, other names: the classifier is still re-initialised
    other = network.build_network(recipe, 11, [f"c{i}" for i in range(11)])
    assert not torch.equal(other.state_dict()["score.weight"], trained["score.weight"])
    same = network.build_network(recipe, 11)  # the checkpoint's classes: everything kept
    assert all(torch.equal(same.state_dict()[k], v) for k, v in trained.items())


def test_init_from_another_architecture_is_one_line_and_writes_nothing(folder, tmp_path, capsys):
    from tiny_model import write_tiny_checkpoint

    other = write_tiny_checkpoint(tmp_path / "dsunet.safetensors", model="dsunet", width=0.0625)
    out = tmp_path / "run"
    config = str(REPO / "config/train/folder_finetune_cpu.yaml")
    assert train_cli.main(["--config", config, "--init", str(other), "--data-root", str(folder), "--out", str(out),
                           *TINY_FINETUNE]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("msseg-train: error: model.init_from") and "\n" not in err
    assert "holds a dsunet" in err and "asks for mssanet" in err and "another architecture" in err
    assert not out.exists()
    # the same network with other arguments: tensors do not fit, also one line, also nothing written
    mssanet = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    assert train_cli.main(["--config", config, "--init", str(mssanet), "--data-root", str(folder), "--out", str(out),
                           "--set", "model.args.width=0.125", *TINY_FINETUNE]) == 2
    err = capsys.readouterr().err.strip()
    assert "another architecture" in err and "width" in err and "\n" not in err and not out.exists()
    # asking for the checkpoint's network ('' = take it) works
    recipe = load_recipe(config, [f"model.init_from={other}", "model.name=", f"data.root={folder}"])
    assert type(network.build_network(recipe, 4, NAMES)).__name__.lower().startswith("dsunet")
    with pytest.raises(RecipeError, match="model.init_from 'nope': unknown zoo model|checkpoint not found"):
        resolve_recipe(load_recipe(config, ["model.init_from=nope"]))


def test_init_fresh_grows_a_trained_network_by_a_refinement_level(folder, tmp_path):
    """decoder_stride 4 -> 2 adds the stride-2 refiner: refused as another architecture unless
    `model.init_fresh` names it; then every other tensor comes from the checkpoint, and the grown network
    predicts exactly what the trained one did (the refiner's correction starts at zero) until training
    moves it."""
    from tiny_model import write_tiny_checkpoint

    from msseg_core.checkpoint import load_checkpoint

    lite = {"encoder": "efficientnet_lite0", "decoder_width": 0.25}
    ckpt = write_tiny_checkpoint(tmp_path / "lite.safetensors", **lite)
    config = REPO / "config/train/folder_finetune_cpu.yaml"
    base = [f"model.init_from={ckpt}", f"data.root={folder}", "model.args.decoder_stride=2"]
    with pytest.raises(RecipeError, match="another architecture"):
        network.build_network(load_recipe(config, base), 11)
    lines: list[str] = []
    net = network.build_network(load_recipe(config, [*base, "model.init_fresh=[refine]"]), 11, log=lines.append)
    trained = load_file(str(ckpt))
    state = net.state_dict()
    own = [k for k in state if k.startswith("refine.")]
    assert own and all(torch.equal(v, trained[k]) for k, v in state.items() if k not in own)
    assert lines == [f"init from {ckpt}: {len(state) - len(own)} of {len(state)} tensors kept; {len(own)} under "
                     f"model.init_fresh (refine) start from their own initialisation"]
    original, _ = load_checkpoint(ckpt)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), original.float().eval()(x))


class Interrupt(Exception):
    """Stands in for a SIGKILL right after an epoch's files."""


@pytest.mark.slow
def test_interrupted_finetune_resumes_without_its_init_file(folder, tmp_path, monkeypatch, capsys):
    """Init + frozen encoder + class-table change, killed after epoch 1 (frozen) and resumed after the init file
    is gone: the same weights as a run that went straight through; the checkpoint carries the new classes."""
    from tiny_model import write_tiny_checkpoint

    lite = {"encoder": "efficientnet_lite0", "decoder_width": 0.25}  # a network with an `encoder` to freeze
    original = write_tiny_checkpoint(tmp_path / "lite.safetensors", **lite)
    init = tmp_path / "init.safetensors"
    shutil.copy(original, init)
    config = str(REPO / "config/train/folder_finetune_cpu.yaml")
    args = ["--config", config, "--init", str(init), "--dataset", "folder", "--data-root", str(folder), *TINY_FINETUNE]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_cli.main([*args, "--out", str(straight)]) == 0
    real = train_mod.save_train_state

    def save_then_die(path, state):
        real(path, state)
        if state["epoch"] == 1:
            raise Interrupt

    with monkeypatch.context() as m:
        m.setattr(train_mod, "save_train_state", save_then_die)
        with pytest.raises(Interrupt):
            train_cli.main([*args, "--out", str(resumed)])
    before = load_file(str(original))
    after_frozen_epoch = load_file(str(resumed / "last.safetensors"))
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after_frozen_epoch[k]) for k in encoder)  # weights and BN stats
    assert any(not torch.equal(before[k], after_frozen_epoch[k]) for k in before if k.startswith("fuses."))
    os.unlink(init)
    capsys.readouterr()
    assert train_cli.main(["--resume", "--out", str(resumed)]) == 0
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(resumed / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    from msseg_core.checkpoint import load_meta

    meta = load_meta(resumed / "best.safetensors")
    assert meta.class_names == NAMES and meta.palette == [list(c) for c in PALETTE]
    assert meta.road_classes == ["road"] and meta.dataset == "folder" and meta.model_args == lite
    assert any(not torch.equal(before[k], b[k]) for k in encoder)  # trained after the frozen epoch


def _ddp_worker(rank: int, world: int, port: int, tmp: str, argv: list[str]) -> None:
    """One torchrun-like rank of a fine-tune; saves the weights it ends with."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    recipe = load_recipe(REPO / "config/train/folder_finetune_cpu.yaml", argv)
    model = train_mod.fit(recipe, Path(tmp) / "run", quiet=True)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
              str(Path(tmp) / f"rank{rank}.safetensors"))


@pytest.mark.slow
def test_finetune_with_a_frozen_encoder_under_ddp(folder, tmp_path, monkeypatch):
    """Two gloo ranks (as torchrun starts them): the encoder is frozen for epoch 1 and trained in epoch 2 (DDP is
    re-wrapped when it thaws), and both ranks end with identical weights."""
    import torch.multiprocessing as mp
    from tiny_model import write_tiny_checkpoint

    lite = {"encoder": "efficientnet_lite0", "decoder_width": 0.25}
    init = write_tiny_checkpoint(tmp_path / "lite.safetensors", **lite)
    argv = [f"model.init_from={init}", f"data.root={folder}", "data.crop_size=[32,48]", "data.eval_size=[32,48]",
            "train.batch_size=2", "train.val_batch_size=2", "train.device=cpu", "train.channels_last=off",
            "train.epochs=2", "optim.freeze_encoder_epochs=1", "optim.lr=0.01"]
    port = free_port()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), argv), nprocs=2, join=True)
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    before, last = load_file(str(init)), load_file(str(tmp_path / "run" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(last[k], a[k], rtol=0, atol=0, msg=k)
    encoder = [k for k in a if k.startswith("encoder.") and k.endswith(".weight")]
    assert any(not torch.equal(before[k], a[k]) for k in encoder)  # thawed in epoch 2 and reduced over ranks
