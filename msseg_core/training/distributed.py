"""Where this process stands in a run: one process, or one rank of a torchrun (DDP) group; and the seeds
that make every epoch draw the same numbers whether a run went straight through or was resumed."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from msseg_core.runtime.segmenter import resolve_device


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # we initialised the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Sum numbers over ranks (float64; exact for integer counts below 2**53)."""
        arr = np.asarray(values, dtype=np.float64)
        if not self.enabled:
            return arr
        t = torch.as_tensor(arr, device=self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()


def setup_distributed(device_spec: str) -> Dist:
    """Join the torchrun group when WORLD_SIZE > 1 (nccl on CUDA, gloo on the CPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, 0, resolve_device(device_spec))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_spec.strip().lower() != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, device, owns)


def derive_seed(*key: int) -> int:
    """A well-mixed 63-bit seed from a tuple of ints (seed, epoch, rank, ...)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(*key: int) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) from a tuple of ints; returns the seed used."""
    seed = derive_seed(*key)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
