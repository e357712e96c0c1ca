"""Training losses: class-weighted cross-entropy, plus optional terms for thin classes.

- Lovász-softmax (Berman, Rannen Triki & Blaschko, CVPR 2018): a convex surrogate of the per-class
  Jaccard loss, i.e. of 1 - IoU, the metric we report. Cross-entropy counts pixels, so a pole that is a
  few hundred pixels weighs little against a road of 100 000; the Lovász term scores each present class's
  IoU, whatever its size. It is mixed with the weighted cross-entropy (`lovasz_weight`), which keeps the
  per-pixel gradients that the Lovász term alone lacks early in training. Computed over the whole batch
  ("present" classes: those in the batch's labels), as the paper's multi-class variant.
- Detail guidance (STDC, Fan et al., CVPR 2021): a small head on a stride-8 feature predicts where the
  labels change class (a Laplacian of the label map), with binary cross-entropy plus Dice. It only
  exists while training (the head is not part of the checkpoint), so inference costs nothing; it asks the
  shallow features to keep the edges that thin objects are made of. Our boundary target is the one-pixel
  Laplacian of the label map at full resolution (STDC fuses three strides with a learned 1x1 conv; one
  stride keeps the head's target fixed and the term cheap).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.classes import IGNORE_INDEX


def _jaccard_gradient(fg_sorted: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
    """The Lovász extension's weights for errors sorted in decreasing order (paper, Algorithm 1); `gts` is
    the class's pixel count over all pixels, also those left out of `fg_sorted`'s tail."""
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if fg_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   tolerance: float = 1e-3) -> torch.Tensor:
    """Mean over the classes present in `target` of the Lovász hinge of (1 - IoU) on softmax probabilities.

    logits: B x C x H x W; target: B x H x W class ids (`ignore_index` never counts). 0 for a perfect,
    fully confident prediction; it grows with every pixel given to the wrong class, most for small classes.

    Pixels whose error for a class is below `tolerance` are left out of that class's sort: they sort last,
    so the weights of the others do not change, and together they add at most `tolerance` to the loss
    (the weights sum to at most 1). On a trained network most pixels are such, and the sorts (the whole
    cost: 1.6 s per batch of 8 x 288 x 384 on one core, all pixels kept) shrink to the uncertain ones.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        gts = fg.sum()
        if tolerance > 0:
            keep = errors.detach() >= tolerance
            if not bool(keep.any()):
                losses.append(errors.sum() * 0.0)
                continue
            fg, errors = fg[keep], errors[keep]
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _jaccard_gradient(fg[order], gts)))
    return torch.stack(losses).mean()


def label_boundaries(target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """B x H x W float map: 1 where a 4-neighbour holds another (labelled) class, 0 elsewhere; a pixel next
    to ignored pixels alone is no boundary (void borders are not edges the network can see)."""
    t = target.long()
    edge = torch.zeros_like(t, dtype=torch.bool)
    for a, b, sl_a, sl_b in (
            (t[:, 1:, :], t[:, :-1, :], (slice(None), slice(1, None)), (slice(None), slice(None, -1))),
            (t[:, :, 1:], t[:, :, :-1], (slice(None), slice(None), slice(1, None)),
             (slice(None), slice(None), slice(None, -1)))):
        differ = (a != b) & (a != ignore_index) & (b != ignore_index)
        edge[(slice(None), *sl_a[1:])] |= differ
        edge[(slice(None), *sl_b[1:])] |= differ
    return edge.float()


_LAYER = re.compile(r"^([A-Za-z_][\w.]*?)(?:\[(\d+)\])?$")


class DetailHead(nn.Module):
    """STDC's detail head on one feature of the network, captured with a forward hook.

    `layer` names a submodule ("encoder[1]": the second output of `model.encoder`, i.e. its stride-8
    feature for the EfficientNet-Lite encoders). The head is trained with the network and thrown away.
    """

    def __init__(self, model: nn.Module, layer: str = "encoder[1]", hidden: int = 64):
        super().__init__()
        found = _LAYER.match(layer)
        if not found:
            raise ValueError(f"detail layer {layer!r}: expected a module path with an optional [index]")
        path, index = found.group(1), found.group(2)
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"detail layer {layer!r}: the network has no module {path!r}") from None
        self.layer, self._index = layer, None if index is None else int(index)
        self._feature: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._capture)
        self.hidden = hidden
        self.head: nn.Module | None = None  # built lazily: the feature's channels are known on the first batch

    def _capture(self, _module: nn.Module, _inputs, output) -> None:
        self._feature = output if self._index is None else output[self._index]

    def build(self, channels: int, device: torch.device) -> None:
        self.head = nn.Sequential(
            nn.Conv2d(channels, self.hidden, 3, padding=1, bias=False), nn.BatchNorm2d(self.hidden),
            nn.ReLU(inplace=True), nn.Conv2d(self.hidden, 1, 1)).to(device)

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        """BCE + Dice of the captured feature's boundary prediction against `target`'s label boundaries."""
        feature, self._feature = self._feature, None
        if feature is None:
            raise RuntimeError(f"detail layer {self.layer!r} produced no output in this forward pass")
        if self.head is None:
            self.build(feature.shape[1], feature.device)
        pred = F.interpolate(self.head(feature.float()), size=target.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        edges = label_boundaries(target)
        valid = (target != IGNORE_INDEX).float()
        bce = F.binary_cross_entropy_with_logits(pred, edges, reduction="none")
        bce = (bce * valid).sum() / valid.sum().clamp(min=1)
        p = pred.sigmoid() * valid
        dice = 1.0 - (2 * (p * edges).sum() + 1.0) / (p.sum() + (edges * valid).sum() + 1.0)
        return bce + dice

    def remove(self) -> None:
        self._handle.remove()


class SegmentationLoss(nn.Module):
    """Weighted cross-entropy + `lovasz_weight` x Lovász-softmax + `detail_weight` x detail guidance
    (+ distillation when teacher logits come with the batch: `distill`)."""

    def __init__(self, ce: nn.CrossEntropyLoss, lovasz_weight: float = 0.0, detail: DetailHead | None = None,
                 detail_weight: float = 0.0, distill: nn.Module | None = None):
        super().__init__()
        self.ce = ce
        self.lovasz_weight = float(lovasz_weight)
        self.detail = detail
        self.detail_weight = float(detail_weight)
        self.distill = distill

    @property
    def weight(self) -> torch.Tensor | None:
        """The class weights (validation reports the plain weighted cross-entropy with them)."""
        return self.ce.weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.distill(logits, target, teacher) if self.distill is not None else self.ce(logits, target)
        if self.lovasz_weight > 0:
            loss = loss + self.lovasz_weight * lovasz_softmax(logits, target)
        if self.detail is not None and self.detail_weight > 0:
            loss = loss + self.detail_weight * self.detail(target)
        return loss


def mfb_weights(masks: Iterable[np.ndarray], num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus; SegNet): weight_c = median(freq) / freq_c.

    freq_c = pixels of class c / labelled pixels of the images where c occurs; ignored pixels count
    nowhere. Classes absent from every label get weight 1 (they are never a target anyway).
    """
    class_pixels = np.zeros(num_classes, dtype=np.float64)
    image_pixels = np.zeros(num_classes, dtype=np.float64)
    for mask in masks:
        m = np.asarray(mask).reshape(-1)
        m = m[m != ignore_index].astype(np.int64)
        if m.size and (m.min() < 0 or m.max() >= num_classes):
            raise ValueError(f"label values outside 0..{num_classes - 1} (and {ignore_index} = ignore)")
        counts = np.bincount(m, minlength=num_classes)
        class_pixels += counts
        image_pixels[counts > 0] += m.size
    weights = np.ones(num_classes, dtype=np.float64)
    present = class_pixels > 0
    if present.any():
        freq = class_pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    return weights


__all__ = ["DetailHead", "SegmentationLoss", "label_boundaries", "lovasz_softmax", "mfb_weights"]
