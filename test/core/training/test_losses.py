"""The training terms for thin classes: Lovász-softmax, the detail (boundary) head, class-balanced crops,
and a split joined from two (train+val), on small synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.classes import IGNORE_INDEX
from msseg_core.training.losses import DetailHead, SegmentationLoss, label_boundaries, lovasz_softmax


def confident(target: torch.Tensor, classes: int, margin: float = 30.0) -> torch.Tensor:
    return F.one_hot(target.clamp(max=classes - 1), classes).permute(0, 3, 1, 2).float() * margin


def test_lovasz_is_zero_for_a_perfect_prediction_and_grows_with_boundary_errors() -> None:
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, :, 16:] = 1
    target[:, 5:8, 3] = 2  # a thin pole, 3 pixels
    perfect = confident(target, 3)
    assert lovasz_softmax(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    losses = []
    for shift in (1, 2, 4):  # the road/building boundary moves by `shift` columns
        wrong = target.clone()
        wrong[:, :, 16 - shift:16] = 1
        losses.append(lovasz_softmax(confident(wrong, 3), target).item())
    assert 0 < losses[0] < losses[1] < losses[2]
    # Missing the 3-pixel pole costs as much IoU as any class: a third of the mean over 3 classes.
    no_pole = target.clone()
    no_pole[:, 5:8, 3] = 0
    assert lovasz_softmax(confident(no_pole, 3), target).item() == pytest.approx(1 / 3, abs=0.01)
    # ... while cross-entropy barely notices it next to the boundary shift of 4 columns.
    assert F.cross_entropy(confident(no_pole, 3, 3.0), target) < F.cross_entropy(confident(wrong, 3, 3.0), target)


def test_lovasz_ignores_void_pixels_and_its_tolerance_keeps_the_value() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 24, 24, requires_grad=True)
    target = torch.randint(0, 4, (2, 24, 24))
    target[:, :4] = IGNORE_INDEX
    exact = lovasz_softmax(logits, target, tolerance=0.0)
    fast = lovasz_softmax(logits, target, tolerance=1e-3)
    assert abs(exact.item() - fast.item()) <= 1e-3
    exact.backward()
    assert logits.grad[:, :, :4].abs().sum() == 0  # void pixels get no gradient
    assert lovasz_softmax(logits, torch.full_like(target, IGNORE_INDEX)).item() == 0.0


def test_boundaries_are_where_classes_meet_not_where_void_begins() -> None:
    t = torch.tensor([[[0, 0, 1], [0, 0, 1], [IGNORE_INDEX, IGNORE_INDEX, 1]]])
    assert label_boundaries(t).tolist() == [[[0, 1, 1], [0, 1, 1], [0, 0, 0]]]


class TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.stem(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_the_detail_head_learns_boundaries_and_stays_out_of_the_network() -> None:
    torch.manual_seed(0)
    model = TwoStage()
    head = DetailHead(model, "stem", hidden=8)
    model(torch.zeros(1, 3, 16, 16))
    head.build(head._feature.shape[1], torch.device("cpu"))
    head._feature = None
    loss_fn = SegmentationLoss(nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX), detail=head, detail_weight=1.0)
    x = torch.rand(4, 3, 32, 32)
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    target[:, :, 16:] = 1
    x[:, :, :, 16:] += 1.0  # the classes differ in colour: the edge is learnable
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.02)
    first = None
    for _ in range(60):
        loss = loss_fn(model(x), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert set(model.state_dict()) == {"stem.weight", "stem.bias", "head.weight", "head.bias"}  # not in checkpoints
    with pytest.raises(ValueError, match="no module"):
        DetailHead(model, "encoder[1]")


def test_rare_crops_contain_the_rare_class_at_the_asked_rate() -> None:
    from msseg_core.data.gpu import GpuResidentData

    class Toy:
        def __len__(self) -> int:
            return 6

        def load(self, i: int):
            rng = np.random.default_rng(i)
            image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
            mask = np.zeros((60, 80), np.uint8)
            r, c = rng.integers(0, 58), rng.integers(0, 78)
            mask[r:r + 2, c:c + 2] = 2  # one 2x2 speck of the rare class
            return image, mask

    data = GpuResidentData(Toy(), "cpu", num_threads=1)
    data.set_rare_classes([2])

    def rate(prob: float) -> float:
        hits = total = 0
        for epoch in range(20):
            data.set_epoch(epoch)
            g = torch.Generator().manual_seed(epoch)
            for _, masks in data.batches(3, crop_size=(20, 24), scale_range=(1.0, 1.5), photometric=False,
                                         generator=g, rare_crop_prob=prob):
                hits += int((masks == 2).flatten(1).any(1).sum())
                total += masks.shape[0]
        return hits / total

    assert rate(1.0) == 1.0  # every crop placed around the speck holds it
    half, none = rate(0.5), rate(0.0)
    assert none < 0.3 and 0.45 <= half <= 0.9 and half > none + 0.25
    with pytest.raises(ValueError, match="set_rare_classes"):
        next(GpuResidentData(Toy(), "cpu", num_threads=1).batches(2, rare_crop_prob=0.5))


def test_train_plus_val_joins_the_splits(tmp_path) -> None:
    from fake_datasets import write_fake_camvid

    from msseg_core.data import DatasetError, build_dataset

    write_fake_camvid(tmp_path, "train", n=3, size=(16, 24), seed=0)
    write_fake_camvid(tmp_path, "val", n=2, size=(16, 24), seed=1)
    joined = build_dataset("camvid", tmp_path, "train+val")
    train, val = build_dataset("camvid", tmp_path, "train"), build_dataset("camvid", tmp_path, "val")
    assert len(joined) == 5 and joined.names == train.names + val.names and joined.split == "train+val"
    np.testing.assert_array_equal(joined.load(4)[1], val.load(1)[1])
    with pytest.raises(DatasetError, match="twice"):
        build_dataset("camvid", tmp_path, "train+train")
