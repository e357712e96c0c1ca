"""Augmented training batches on the device: the whole split resident there (class-balanced crops, teacher
logits cut like each crop), or a DataLoader with workers; the same number of batches on every rank."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from msseg_core.data.datasets import DatasetError
from msseg_core.training.distributed import Dist, derive_seed
from msseg_core.training.recipe import Recipe, RecipeError


class TrainBatches:
    """Augmented, normalised training batches on the device, the same number on every rank."""

    def __init__(self, dataset, recipe: Recipe, ctx: Dist):
        self.recipe, self.ctx = recipe, ctx
        d, bs = recipe.data, recipe.train.batch_size
        if d.pipeline == "gpu_resident":
            from msseg_core.data.gpu import GpuResidentData

            self.source = GpuResidentData(dataset, ctx.device, rank=ctx.rank, world_size=ctx.world_size,
                                          seed=recipe.train.seed, mean=d.mean, std=d.std)
            if d.rare_crop_prob > 0:
                self.source.set_rare_classes(_class_ids(dataset.classes.names, d.rare_classes, "data.rare_classes"))
            self.drop_last = self.source.samples_per_rank >= bs  # no ragged last batch (BatchNorm statistics)
            self.steps = self.source.num_batches(bs, drop_last=self.drop_last)
        else:
            from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

            from msseg_core.data import build_dataset
            from msseg_core.data.transforms import TrainTransform

            transform = TrainTransform(crop_size=tuple(d.crop_size), scale_range=tuple(d.scale_range),
                                       hflip=0.5 if d.hflip else 0.0, photometric=_jitter(recipe), mean=d.mean,
                                       std=d.std, stretch=d.stretch)
            ds = build_dataset(d.dataset, d.root, d.train_split, transform=transform)
            self.generator = torch.Generator()
            if ctx.enabled:
                self.sampler = DistributedSampler(ds, ctx.world_size, ctx.rank, shuffle=True,
                                                  seed=recipe.train.seed, drop_last=True)
            else:
                self.sampler = RandomSampler(ds, generator=self.generator)
            per_rank = len(self.sampler)
            # No persistent workers: each epoch's workers are seeded from that epoch's generator, so a
            # resumed epoch augments exactly like the uninterrupted one.
            self.loader = DataLoader(ds, batch_size=bs, sampler=self.sampler, num_workers=d.workers,
                                     pin_memory=ctx.device.type == "cuda", drop_last=per_rank >= bs,
                                     generator=self.generator)
            self.steps = len(self.loader)
        if self.steps < 1:
            raise RecipeError(f"no training batch: {len(dataset)} images over {ctx.world_size} rank(s) "
                              f"give no batch of {bs}; lower train.batch_size")

    def train_masks(self) -> Iterator[np.ndarray]:
        """Every training label, untransformed (for class weights): from memory when resident."""
        if self.recipe.data.pipeline == "gpu_resident":
            for mask in self.source.masks:
                yield mask.cpu().numpy()
        else:
            ds = self.loader.dataset
            for i in range(len(ds)):
                yield ds.load_mask(i)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of epoch `epoch`: the order and augmentation depend only on (seed, epoch)."""
        d, bs, seed = self.recipe.data, self.recipe.train.batch_size, self.recipe.train.seed
        if d.pipeline == "gpu_resident":
            self.source.set_epoch(epoch)  # the shard permutation (seeded with seed + epoch, as every rank)
            generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 1, self.ctx.rank))  # augmentation
            yield from self.source.batches(bs, crop_size=tuple(d.crop_size), scale_range=tuple(d.scale_range),
                                           hflip=0.5 if d.hflip else 0.0, photometric=_jitter(self.recipe),
                                           generator=generator, drop_last=self.drop_last,
                                           rare_crop_prob=d.rare_crop_prob, stretch=d.stretch)
            return
        if self.ctx.enabled:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive_seed(seed, epoch, 2, self.ctx.rank))  # worker seeds, shuffle
        non_blocking = self.ctx.device.type == "cuda"
        batches = iter(self.loader)
        try:
            for images, masks in batches:
                yield images.to(self.ctx.device, non_blocking=non_blocking), masks.to(self.ctx.device).long()
        except DatasetError as exc:  # re-raised from a worker with its traceback in the text: keep the message
            found = re.search(r"DatasetError: (.+)\s*$", str(exc))
            raise DatasetError(found.group(1).strip() if found else str(exc)) from None
        finally:
            # Stop the worker processes now. After a worker raised, the traceback holds the iterator until a
            # garbage collection, and tearing the workers down from inside the collector can abort the process.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def _jitter(recipe: Recipe) -> float:
    return recipe.data.jitter if recipe.data.photometric else 0.0


def _class_ids(names: Sequence[str], wanted: Sequence[str], key: str) -> list[int]:
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise RecipeError(f"{key}: no class {', '.join(map(repr, unknown))}; classes are {', '.join(names)}")
    return [list(names).index(n) for n in wanted]
