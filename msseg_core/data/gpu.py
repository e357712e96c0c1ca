"""A whole split held on the accelerator as uint8, augmented there in batches: no decode or DataLoader cost
per epoch once loaded.

CamVid train (367 images at 360x480) takes 367 * (3 + 1) * 360 * 480 bytes = 254 MB (242 MiB) as uint8
images plus masks; Cityscapes train (2975 at 1024x2048) would take 25 GB, so resize it (`size=`) first.

Augmentation matches `TrainTransform` in kind (random scale, crop with mask padding 255, horizontal flip,
brightness/contrast/saturation jitter, normalisation) but runs as batched tensor ops: one sampling grid
per sample built from its scale, crop offset and flip, then `grid_sample` — bilinear for images, nearest
for masks, so masks only ever hold their original ids or 255 (padding / out of bounds). Differences from
`TrainTransform`: no antialiasing when shrinking (at scale >= 0.5 bilinear sampling between pixel centres
already averages 2x2), and the jitter order is fixed (brightness, contrast, saturation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as TF

from msseg_core.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from msseg_core.classes import IGNORE_INDEX
from msseg_core.data.datasets import DatasetError
from msseg_core.data.transforms import DEFAULT_JITTER

_GRAY = (0.299, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def split_bytes(num_images: int, height: int, width: int) -> int:
    """Bytes GpuResidentData needs for `num_images` RGB uint8 images and their uint8 masks."""
    return num_images * (3 + 1) * height * width


def _raw_sample(dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Untransformed (image, mask): SegmentationDataset.load, or indexing a dataset without a transform."""
    load = getattr(dataset, "load", None)
    image, mask = load(index) if load is not None else dataset[index]
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
        raise TypeError("GpuResidentData needs raw samples (uint8 HxWx3 image, uint8 HxW mask); "
                        f"got {type(image).__name__} — pass a dataset without transform")
    return image, mask


class GpuResidentData:
    """All of one split as uint8 tensors on `device` (N,3,H,W images, N,H,W masks), served as augmented,
    normalised batches made on that device.

    `size` (h, w) resizes every sample at load (image INTER_AREA/LINEAR, mask NEAREST); without it all
    samples must share one size. Sharding follows DistributedSampler: each epoch one permutation seeded
    with `seed + epoch`, padded by wrapping to a multiple of `world_size`, and rank r takes every
    world_size-th index from r — so ranks see disjoint shards that together cover the split.
    """

    def __init__(self, dataset, device: str | torch.device = "cpu", size: Sequence[int] | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 num_threads: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        n = len(dataset)
        if n == 0:
            raise ValueError("GpuResidentData needs a non-empty dataset")
        self.device = torch.device(device)
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch = 0
        self.names: list[str] = list(getattr(dataset, "names", [str(i) for i in range(n)]))
        self.classes = getattr(dataset, "classes", None)

        first = _raw_sample(dataset, 0)
        h, w = (int(s) for s in size) if size is not None else first[0].shape[:2]
        self.size = (h, w)
        images = torch.empty((n, 3, h, w), dtype=torch.uint8)
        masks = torch.empty((n, h, w), dtype=torch.uint8)

        def put(i: int, sample: tuple[np.ndarray, np.ndarray] | None = None) -> None:
            image, mask = sample if sample is not None else _raw_sample(dataset, i)
            if image.shape[:2] != (h, w):
                if size is None:
                    path = dataset.samples[i][0] if hasattr(dataset, "samples") else f"sample {i}"
                    raise DatasetError(f"{path}: size {image.shape[1]}x{image.shape[0]} differs from the first "
                                       f"sample's {w}x{h} (WxH); pass size=(h, w) to resize all samples")
                shrink = image.shape[0] > h and image.shape[1] > w
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
            images[i] = torch.from_numpy(image).permute(2, 0, 1)
            masks[i] = torch.from_numpy(mask)

        put(0, first)
        workers = num_threads or min(8, os.cpu_count() or 1)
        if workers > 1 and n > 1:
            with ThreadPoolExecutor(workers) as pool:  # cv2 decoding releases the GIL
                list(pool.map(put, range(1, n)))
        else:
            for i in range(1, n):
                put(i)
        self.images = images.to(self.device)
        self.masks = masks.to(self.device)
        self.soft: torch.Tensor | None = None  # teacher logits for distillation (set_soft_targets)
        self._rare: list[list[torch.Tensor]] = []  # per image, per rare class: flat pixel indices (set_rare_classes)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def set_soft_targets(self, logits: torch.Tensor) -> None:
        """Attach per-sample teacher logits (N x C x h x w at any h, w; kept as fp16): every batch then also
        carries them, cut by the same scale / crop / flip as its images, so teacher and student see one view."""
        if logits.ndim != 4 or logits.shape[0] != len(self):
            raise ValueError(f"soft targets must be N x C x h x w with N = {len(self)}, got {tuple(logits.shape)}")
        self.soft = logits.to(self.device, torch.float16)

    def set_rare_classes(self, class_ids: Sequence[int]) -> None:
        """Remember where each of `class_ids` lies in every image, so `batches(rare_crop_prob=p)` can centre
        a fraction p of the crops on one of them (class-balanced crops: a pole or a sign is in a crop only
        by luck otherwise, a few percent of the time)."""
        ids = [int(c) for c in class_ids]
        self._rare = [[torch.nonzero(self.masks[i].reshape(-1) == c).reshape(-1).cpu() for c in ids]
                      for i in range(len(self))]

    # bookkeeping -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        """Device bytes held by the images and masks."""
        return self.images.numel() * self.images.element_size() + self.masks.numel() * self.masks.element_size()

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(len(self) / self.world_size)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = self.samples_per_rank
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of the next `batches()` call (e.g. when resuming)."""
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices of `epoch`, in visiting order (CPU int64)."""
        n = len(self)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        total = self.samples_per_rank * self.world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank:total:self.world_size]

    # batches ---------------------------------------------------------------------------------------------
    def batches(self, batch_size: int, crop_size: Sequence[int] | None = None,
                scale_range: tuple[float, float] = (0.5, 2.0), hflip: float = 0.5,
                photometric: bool | float = True, generator: torch.Generator | None = None,
                drop_last: bool = False, rare_crop_prob: float = 0.0,
                stretch: float = 1.0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (float32 B,3,h,w normalised images, int64 B,h,w masks[, float32 B,C,h,w teacher
        logits when `set_soft_targets` was called]) on the device; advances the epoch so the next call
        shuffles differently. Random parameters come from `generator` (default: one
        seeded with seed, epoch and rank, so runs repeat). `rare_crop_prob`: the fraction of crops placed
        around a pixel of a rare class (`set_rare_classes`), the class drawn uniformly among those in the image.
        `stretch`: an extra horizontal factor on every crop's scale (see `RandomScale`)."""
        if rare_crop_prob > 0 and not self._rare:
            raise ValueError("rare_crop_prob needs set_rare_classes() first")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        epoch = self.epoch
        self.epoch += 1
        order = self.indices(epoch)
        if generator is None:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + self.rank)
        ch, cw = (int(s) for s in crop_size) if crop_size is not None else self.size
        jitter = DEFAULT_JITTER if photometric is True else float(photometric or 0.0)
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if not stretch > 0:
            raise ValueError(f"stretch must be > 0, got {stretch}")

        def gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            stop = len(order) - (len(order) % batch_size if drop_last else 0)
            for start in range(0, stop, batch_size):
                idx = order[start:start + batch_size]
                yield self._augment(idx.to(self.device), (ch, cw), (lo, hi), hflip, jitter, generator, rare_crop_prob,
                                    stretch)

        return gen()

    def _rand(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=generator.device).to(self.device, torch.float32)

    def _augment(self, idx: torch.Tensor, crop: tuple[int, int], scale_range: tuple[float, float],
                 hflip: float, jitter: float, g: torch.Generator,
                 rare_crop_prob: float = 0.0, stretch: float = 1.0) -> tuple[torch.Tensor, ...]:
        b = idx.numel()
        h, w = self.size
        ch, cw = crop
        dev = self.device
        lo, hi = scale_range
        scale = lo + (hi - lo) * self._rand(b, g)
        sh, sw = (h * scale).round().clamp(min=1), (w * scale * stretch).round().clamp(min=1)  # scaled size

        # Crop offset in the scaled image, integer like RandomCrop: inside it when it is larger than the crop,
        # else the image lands at a random place inside the crop (the rest is padding).
        def offset(scaled: torch.Tensor, crop_len: int) -> torch.Tensor:
            lo_ = torch.minimum(scaled - crop_len, torch.zeros_like(scaled))
            span = (scaled - crop_len).abs() + 1
            return lo_ + (self._rand(b, g) * span).floor().clamp(max=span - 1)

        y0, x0 = offset(sh, ch), offset(sw, cw)
        if rare_crop_prob > 0:
            y0, x0 = self._rare_offsets(idx, y0, x0, sh, sw, crop, rare_crop_prob, g)
        flip = self._rand(b, g) < hflip
        jj = torch.arange(cw, device=dev, dtype=torch.float32)
        ii = torch.arange(ch, device=dev, dtype=torch.float32)
        jj = torch.where(flip[:, None], cw - 1 - jj[None], jj[None])  # (b, cw)
        # Output pixel centre -> normalised source coordinate (align_corners=False): 2 * (x0 + j + .5) / sw - 1
        gx = 2 * (x0[:, None] + jj + 0.5) / sw[:, None] - 1
        gy = 2 * (y0[:, None] + ii[None] + 0.5) / sh[:, None] - 1
        grid = torch.stack((gx[:, None, :].expand(b, ch, cw), gy[:, :, None].expand(b, ch, cw)), dim=-1)

        img = self.images.index_select(0, idx).float().div_(255)
        img = TF.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Masks: sample id+1 with zero padding, so 0 marks out-of-bounds and becomes IGNORE_INDEX.
        msk = self.masks.index_select(0, idx).float().add_(1).unsqueeze(1)
        msk = TF.grid_sample(msk, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        msk = msk.squeeze(1).round_().long()
        msk = torch.where(msk == 0, torch.full_like(msk, IGNORE_INDEX), msk - 1)

        if jitter > 0:
            img = self._jitter(img, jitter, g)
        img = (img - self.mean) / self.std
        if self.soft is None:
            return img.contiguous(), msk
        # The grid is in normalised coordinates, so it cuts the (smaller) logit maps at the same place.
        soft = TF.grid_sample(self.soft.index_select(0, idx).float(), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)
        return img.contiguous(), msk, soft

    def _rare_offsets(self, idx: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, sh: torch.Tensor,
                      sw: torch.Tensor, crop: tuple[int, int], prob: float,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Move the chosen crops so that they hold a random pixel of a random rare class of their image: the
        pixel lands at a uniform place inside the crop, then the crop is pushed back inside the scaled image."""
        b = idx.numel()
        h, w = self.size
        ch, cw = crop
        chosen, pick_class, pick_pixel, place_y, place_x = (self._rand(b, g).cpu() for _ in range(5))
        y0, x0 = y0.clone(), x0.clone()
        for k, i in enumerate(idx.tolist()):
            present = [pix for pix in self._rare[i] if pix.numel()]
            if chosen[k] >= prob or not present:
                continue
            pixels = present[min(len(present) - 1, int(pick_class[k] * len(present)))]
            flat = int(pixels[min(pixels.numel() - 1, int(pick_pixel[k] * pixels.numel()))])
            # the pixel's centre in the scaled image (the sampling grid maps output centres the same way)
            ys, xs = (flat // w + 0.5) * float(sh[k]) / h, (flat % w + 0.5) * float(sw[k]) / w
            for offs, pos, scaled, length, u in ((y0, ys, float(sh[k]), ch, place_y[k]),
                                                 (x0, xs, float(sw[k]), cw, place_x[k])):
                start = math.floor(pos - float(u) * (length - 1))
                lo_, hi_ = min(0.0, scaled - length), max(0.0, scaled - length)
                offs[k] = min(max(start, lo_), hi_)
        return y0, x0

    def _jitter(self, img: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
        """Per-sample brightness, contrast and saturation factors in [1 - s, 1 + s], as torchvision blends."""
        b = img.shape[0]

        def factor() -> torch.Tensor:
            return (1 - strength + 2 * strength * self._rand(b, g)).clamp(min=0).view(b, 1, 1, 1)

        weights = torch.tensor(_GRAY, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        img = (img * factor()).clamp_(0, 1)
        gray_mean = (img * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        c = factor()
        img = (img * c + gray_mean * (1 - c)).clamp_(0, 1)
        gray = (img * weights).sum(1, keepdim=True)
        s = factor()
        return (img * s + gray * (1 - s)).clamp_(0, 1)


__all__ = ["GpuResidentData", "split_bytes"]
