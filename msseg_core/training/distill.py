"""Knowledge distillation: a small student learns from the labels and from a trained teacher's soft targets.

Teacher logits are computed once per training image, at `target_scale` of its size (fp16: CamVid's 367
frames at 0.5x take 350 MB; a teacher whose network input is larger than the frame keeps its detail up to
that size, e.g. 1.5x for a 540x720 teacher on 360x480 frames, 3.1 GB). They are cut by the same scale /
crop / flip as each training crop (`GpuResidentData.set_soft_targets`), so teacher and student look at the
same view while the teacher costs one forward pass per image for the whole run instead of one per crop and
epoch. The teacher sees the un-jittered frame at its own input size and normalisation, through `Segmenter`,
so a calibrated teacher's logits arrive divided by its temperature: its best guess, as probabilities that
mean what they say; `temperature` below softens both sides further.

Loss (Hinton et al. 2015, per pixel as in Liu et al.'s structured distillation):
    CE_w(student, labels) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
averaged over labelled pixels; T^2 keeps the soft term's gradients at the scale of the hard one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.classes import IGNORE_INDEX


class DistillationLoss(nn.Module):
    """Class-weighted cross-entropy plus the temperature-scaled KL term when teacher logits are given."""

    def __init__(self, ce: nn.CrossEntropyLoss, weight: float = 1.0, temperature: float = 2.0):
        super().__init__()
        self.ce = ce
        self.kd_weight = float(weight)
        self.temperature = float(temperature)

    @property
    def weight(self) -> torch.Tensor | None:
        """The class weights (validation reports the plain weighted cross-entropy with them)."""
        return self.ce.weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.ce(logits, target)
        if teacher is None or self.kd_weight == 0:
            return loss
        t = self.temperature
        if teacher.shape[-2:] != logits.shape[-2:]:
            teacher = F.interpolate(teacher, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        log_p = F.log_softmax(logits.float() / t, dim=1)
        log_q = F.log_softmax(teacher.float() / t, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum(1)  # B x H x W
        valid = target != IGNORE_INDEX
        kd = kl[valid].mean() if bool(valid.any()) else kl.sum() * 0.0
        return loss + self.kd_weight * t * t * kd


@torch.no_grad()
def teacher_logits(teacher: nn.Module, meta, images: torch.Tensor, device: torch.device, scale: float = 0.5,
                   batch_size: int = 4, tta: str = "none") -> torch.Tensor:
    """N x C x round(H*scale) x round(W*scale) fp16 logits of `teacher` (with its checkpoint metadata `meta`)
    for N x 3 x H x W uint8 images, run at the teacher's own input size and normalisation (`Segmenter`).

    `tta='flip'` makes the teacher the mean of each frame's and its mirror's logits: a better teacher than the
    network alone (flip TTA gains about a point on val) at no cost to the student at inference, since the
    logits are computed once per image."""
    from msseg_core.runtime.segmenter import Segmenter

    segmenter = Segmenter(teacher, meta, device=str(device), backend="torch", threads=torch.get_num_threads(),
                          tta=tta)
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = []
    for start in range(0, images.shape[0], batch_size):
        frames = images[start:start + batch_size].permute(0, 2, 3, 1).contiguous()
        logits = segmenter.logits_from_tensor(frames, at_frame_size=False)  # at the network's resolution
        shrink = logits.shape[-2] >= size[0] and logits.shape[-1] >= size[1]
        logits = F.interpolate(logits, size=size, mode="area") if shrink else \
            F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out.append(logits.to("cpu", torch.float16))
    return torch.cat(out)
