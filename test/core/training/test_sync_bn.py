"""`train.sync_bn` on the CPU: two gloo ranks holding parts of a batch must normalise, learn and track statistics
exactly as one BatchNorm over the whole batch, which is what a single-process run of the same global batch does."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers_ddp import free_port
from safetensors.torch import load_file, save_file
from torch import nn

from msseg_core.training.sync_bn import GroupBatchNorm2d, convert_group_batchnorm

SPLIT = (3, 2)  # unequal shares: the shared statistics must weigh ranks by their pixel counts
CHANNELS = 4


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A batch with a large channel mean (the case a one-pass variance gets wrong) and the loss's weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SPLIT), CHANNELS, 5, 6, generator=g, dtype=torch.float64) * 0.5 + 100.0
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.float(), w.float()


def run_steps(bn: nn.BatchNorm2d, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two training steps' forward and backward (the second sees updated running stats only), then eval."""
    out = {}
    for step in range(2):
        xi = x.clone().requires_grad_(True)
        y = bn(xi)
        (y * w).sum().backward()
        out[f"y{step}"], out[f"dx{step}"] = y.detach(), xi.grad
    out.update(dweight=bn.weight.grad, dbias=bn.bias.grad, running_mean=bn.running_mean.clone(),
               running_var=bn.running_var.clone(), tracked=bn.num_batches_tracked.clone().double())
    bn.eval()
    out["eval"] = bn(x).detach()
    return out


def make_bn(kind: type, momentum: float | None) -> nn.BatchNorm2d:
    torch.manual_seed(1)
    bn = kind(CHANNELS, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def worker(rank: int, port: int, momentum: float | None, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(SPLIT))
    try:
        x, w = batch()
        start = sum(SPLIT[:rank])
        part = slice(start, start + SPLIT[rank])
        result = run_steps(make_bn(GroupBatchNorm2d, momentum), x[part], w[part])
        save_file({k: v.contiguous() for k, v in result.items()}, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
@pytest.mark.parametrize("momentum", [0.1, None])
def test_two_ranks_equal_one_batchnorm_over_the_whole_batch(momentum, tmp_path):
    x, w = batch()
    ref = run_steps(make_bn(nn.BatchNorm2d, momentum), x, w)
    mp.spawn(worker, args=(free_port(), momentum, str(tmp_path)), nprocs=len(SPLIT), join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(len(SPLIT))]
    tol = dict(rtol=1e-4, atol=1e-4)
    for key in ("y0", "dx0", "y1", "dx1", "eval"):  # each rank holds its rows of the whole batch's result
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), ref[key], **tol, msg=key)
    for key in ("dweight", "dbias"):  # DDP sums (averages) these over ranks
        torch.testing.assert_close(sum(r[key] for r in ranks), ref[key], **tol, msg=key)
    for key in ("running_mean", "running_var", "tracked"):  # every rank tracks the whole batch's statistics
        for r in ranks:
            torch.testing.assert_close(r[key], ref[key], **tol, msg=key)


def test_conversion_keeps_the_checkpoint_and_is_plain_batchnorm_outside_a_group():
    net = nn.Sequential(nn.Conv2d(3, CHANNELS, 3), nn.BatchNorm2d(CHANNELS), nn.Sequential(nn.BatchNorm2d(CHANNELS)))
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[1].weight
    converted = convert_group_batchnorm(net)
    assert isinstance(converted[1], GroupBatchNorm2d) and isinstance(converted[2][0], GroupBatchNorm2d)
    assert converted[1].weight is weight  # shared, so the optimiser and DDP see the same parameters
    assert converted.state_dict().keys() == plain.keys()
    x = torch.randn(2, 3, 8, 8)
    reference = nn.Sequential(nn.Conv2d(3, CHANNELS, 3), nn.BatchNorm2d(CHANNELS), nn.BatchNorm2d(CHANNELS))
    reference.load_state_dict({k.replace("2.0.", "2."): v for k, v in plain.items()})
    torch.testing.assert_close(converted(x), reference(x))  # training mode, no process group: the batch's own
    torch.testing.assert_close(converted[1].running_var, reference[1].running_var)
