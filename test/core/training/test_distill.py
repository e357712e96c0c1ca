"""Fine-tuning from ImageNet weights and distillation from a teacher: real tiny runs through fit()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_model import write_tiny_checkpoint

from msseg_core.checkpoint import load_checkpoint
from msseg_core.classes import IGNORE_INDEX
from msseg_core.data.gpu import GpuResidentData
from msseg_core.models.encoders import pretrained_path, read_state_dict
from msseg_core.runtime.segmenter import Segmenter
from msseg_core.training import train as train_mod
from msseg_core.training.distill import DistillationLoss, teacher_logits
from msseg_core.training.recipe import RecipeError, load_recipe

PRETRAINED = """
model: {name: mssanet, args: {encoder: efficientnet_lite0, decoder_width: 0.25}, encoder_weights: imagenet}
data: {root: DATA, crop_size: [32, 48], eval_size: [32, 48], scale_range: [0.75, 1.25], workers: 0,
       mean: [0.498, 0.498, 0.498], std: [0.502, 0.502, 0.502]}
optim: {name: adamw, lr: 0.004, schedule: poly, warmup_epochs: 0, encoder_lr_mult: 0.1}
train: {epochs: 2, batch_size: 4, val_batch_size: 4, class_weighting: mfb, device: cpu, seed: 1,
        channels_last: "on"}
"""
STUDENT = """
model: {name: mssanet, args: {width: 0.0625, num_pools: 3}}
data: {root: DATA, crop_size: [32, 48], eval_size: [32, 48], scale_range: [0.75, 1.25], workers: 0}
optim: {name: adamw, lr: 0.03, schedule: poly, warmup_epochs: 0.5}
train: {epochs: 2, batch_size: 4, val_batch_size: 4, device: cpu, seed: 3}
distill: {teacher: TEACHER, weight: 1.0, temperature: 2.0, target_scale: 0.5}
"""


CAMVID_TRAIN_FRAMES = 8  # conftest's camvid_root: these runs train on 8 generated frames


def recipe(tmp_path: Path, text: str, **subs: str):
    for key, value in subs.items():
        text = text.replace(key, value)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path)


def test_fine_tuning_starts_from_imagenet_weights_and_moves_the_encoder_slowly(tmp_path, camvid_root, monkeypatch):
    r = recipe(tmp_path, PRETRAINED, DATA=str(camvid_root))
    groups_seen = []
    make = train_mod.make_optimizer

    def spy(model, rec, extra=()):
        opt = make(model, rec, extra)
        groups_seen.append([(g["lr"], len(g["params"])) for g in opt.param_groups])
        start = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        groups_seen.append(start)
        return opt

    monkeypatch.setattr(train_mod, "make_optimizer", spy)
    train_mod.fit(r, tmp_path / "run", quiet=True)
    lrs = sorted({lr for lr, _ in groups_seen[0]})
    assert lrs == pytest.approx([0.0004, 0.004])  # encoder at encoder_lr_mult x lr
    start = groups_seen[1]
    imagenet = read_state_dict(pretrained_path("efficientnet_lite0"))
    assert torch.equal(start["stem.0.weight"], imagenet["_conv_stem.weight"])  # training began from ImageNet
    trained = load_file(str(tmp_path / "run" / "last.safetensors"))
    moved = (trained["encoder.stem.0.weight"] - start["stem.0.weight"]).abs().max().item()
    assert 0 < moved < 0.05  # adapted, not overwritten
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3


def test_imagenet_weights_on_a_network_without_such_an_encoder_is_a_recipe_error(tmp_path, camvid_root):
    r = recipe(tmp_path, PRETRAINED.replace("args: {encoder: efficientnet_lite0, decoder_width: 0.25}",
                                            "args: {width: 0.0625}"), DATA=str(camvid_root))
    with pytest.raises(RecipeError, match="encoder_weights 'imagenet'.*no EfficientNet-Lite encoder"):
        train_mod.fit(r, tmp_path / "run", quiet=True)


def test_distillation_loss_is_the_cross_entropy_plus_a_scaled_kl_term():
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    loss = DistillationLoss(ce, weight=0.5, temperature=3.0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, 0] = IGNORE_INDEX
    assert loss(logits, target) == pytest.approx(ce(logits, target).item())
    assert loss(logits, target, logits.clone()).item() == pytest.approx(ce(logits, target).item(), abs=1e-6)
    teacher = torch.randn(2, 5, 6, 7)
    q = torch.softmax(teacher / 3, 1)
    kl = (q * (torch.log_softmax(teacher / 3, 1) - torch.log_softmax(logits / 3, 1))).sum(1)
    expected = ce(logits, target) + 0.5 * 9 * kl[target != IGNORE_INDEX].mean()
    assert loss(logits, target, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    small = torch.nn.functional.interpolate(teacher, size=(3, 4), mode="bilinear")  # cached at a lower size
    assert torch.isfinite(loss(logits, target, small))


def test_soft_targets_are_cut_like_the_images(camvid_root):
    from msseg_core.data import build_dataset

    data = GpuResidentData(build_dataset("camvid", camvid_root, "train"), mean=(0, 0, 0), std=(1, 1, 1))
    # Soft "targets" that are the image itself at half size: every batch's soft part must match its image.
    half = torch.nn.functional.interpolate(data.images.float() / 255, scale_factor=0.5, mode="area")
    data.set_soft_targets(half)
    images, masks, soft = next(iter(data.batches(4, crop_size=(24, 32), scale_range=(0.8, 1.2), photometric=False)))
    assert soft.shape == (4, 3, 24, 32) and masks.shape == (4, 24, 32)
    inside = (masks != IGNORE_INDEX).unsqueeze(1).expand_as(images)
    assert (soft - images)[inside].abs().mean().item() < 0.08  # the same view (bilinear at half resolution)


def test_a_student_distils_from_a_teacher_checkpoint(tmp_path, camvid_root, tiny_checkpoint, capsys):
    r = recipe(tmp_path, STUDENT, DATA=str(camvid_root), TEACHER=str(tiny_checkpoint))
    train_mod.fit(r, tmp_path / "student", quiet=False)
    out = capsys.readouterr().out
    assert f"distilling from {tiny_checkpoint}" in out and "teacher logits of 8 images" in out
    assert "tta none" in out
    assert (tmp_path / "student" / "best.safetensors").is_file()
    bad = recipe(tmp_path, STUDENT, DATA=str(camvid_root), TEACHER=str(tmp_path / "missing.safetensors"))
    with pytest.raises(RecipeError, match="distill.teacher"):
        train_mod.fit(bad, tmp_path / "student2", quiet=True)
    with pytest.raises(RecipeError, match="gpu_resident"):
        recipe(tmp_path, STUDENT.replace("workers: 0}", "workers: 0, pipeline: loader}"), DATA=str(camvid_root),
               TEACHER=str(tiny_checkpoint))


def test_a_flip_teacher_gives_the_mean_of_each_frame_and_its_mirror(tiny_checkpoint):
    teacher, meta = load_checkpoint(tiny_checkpoint, device=torch.device("cpu"))
    images = torch.randint(0, 256, (3, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = teacher_logits(teacher, meta, images, torch.device("cpu"), scale=1.0).float()
    mirrored = teacher_logits(teacher, meta, images.flip(3), torch.device("cpu"), scale=1.0).float().flip(3)
    flip = teacher_logits(teacher, meta, images, torch.device("cpu"), scale=1.0, tta="flip").float()
    assert not torch.allclose(plain, mirrored, atol=1e-2)  # the network is not mirror-symmetric: a real test
    assert torch.allclose(flip, (plain + mirrored) / 2, atol=2e-2)  # fp16 cache


def test_distillation_with_a_flip_teacher_trains_and_a_bad_tta_is_refused(tmp_path, camvid_root, tiny_checkpoint,
                                                                          capsys):
    text = STUDENT.replace("target_scale: 0.5}", "target_scale: 0.5, tta: flip}")
    train_mod.fit(recipe(tmp_path, text, DATA=str(camvid_root), TEACHER=str(tiny_checkpoint)), tmp_path / "s",
                  quiet=False)
    assert "tta flip" in capsys.readouterr().out
    assert (tmp_path / "s" / "last.safetensors").is_file()
    with pytest.raises(RecipeError, match="distill.tta must be one of none, flip"):
        recipe(tmp_path, text.replace("tta: flip", "tta: mirror"), DATA=str(camvid_root), TEACHER=str(tiny_checkpoint))


def test_targets_above_the_frame_size_keep_the_teachers_own_resolution(tmp_path):
    # A teacher whose network input is twice the frames' size (as a 540x720 input is 1.5x CamVid's frames).
    teacher, meta = load_checkpoint(write_tiny_checkpoint(tmp_path / "t.safetensors", input_size=(48, 64)),
                                    device=torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    sharp = teacher_logits(teacher, meta, images, cpu, scale=2.0).float()
    own = Segmenter(teacher, meta, device="cpu", backend="torch").logits_from_tensor(
        images.permute(0, 2, 3, 1).contiguous(), at_frame_size=False)
    assert sharp.shape == own.shape == (2, meta.num_classes, 48, 64)
    assert torch.allclose(sharp, own, atol=2e-2)  # the network's output itself (fp16 cache)
    at_frame = teacher_logits(teacher, meta, images, cpu, scale=1.0).float()
    assert at_frame.shape[-2:] == (24, 32)
    blurred = torch.nn.functional.interpolate(at_frame, size=(48, 64), mode="bilinear", align_corners=False)
    # not the frame-size targets scaled up: the detail is kept
    assert (sharp - blurred).abs().mean() > 0.03 * sharp.abs().mean()
