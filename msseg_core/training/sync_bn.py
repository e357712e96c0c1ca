"""BatchNorm whose batch statistics span every rank of a DDP run, on any device.

Under DDP each rank normalises its own share of the batch: two CPU processes with `train.batch_size: 4` each
normalise over 4 crops where one process of batch 8 normalised over 8. torch's `nn.SyncBatchNorm` fixes that on
GPUs only (its kernels are CUDA's), so on the CPU (gloo) `train.sync_bn` uses `GroupBatchNorm2d` instead: the
same arithmetic written with a differentiable sum over ranks (`all_reduce_sum`), so autograd carries the gradient
through the shared mean and variance as SyncBatchNorm's backward does.

Two passes (the sum and count, then the squared deviations from the shared mean) rather than sum and sum of
squares: the one-pass form loses the variance to cancellation when a channel's mean is large against its spread.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum shared by every rank is the sum of the ranks' gradients.
    (torch.distributed.nn.functional.all_reduce does this, but warns that it is deprecated.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks of the default process group, differentiably."""
    return _AllReduceSum.apply(tensor)


class GroupBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training-mode statistics are those of the whole batch over all ranks of the default
    process group; in eval mode, or outside a group, it is plain BatchNorm (so checkpoints and export see no
    difference: the parameters and buffers are BatchNorm2d's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not grouped:
            return super().forward(x)
        self._check_input_dim(x)
        dims = (0, 2, 3)
        shape = (1, -1, 1, 1)
        local_count = x.new_tensor([x.numel() // x.shape[1]], dtype=torch.float32)
        xf = x.float()  # x itself when it is fp32
        totals = all_reduce_sum(torch.cat([xf.sum(dims), local_count]))
        count = float(totals[-1].detach())
        if count < 2:
            raise ValueError(f"BatchNorm needs more than one value per channel over all ranks, got {x.shape}")
        mean = totals[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims)) / count  # biased: what the batch is normalised by
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """As `nn.BatchNorm2d`: momentum-weighted, or a cumulative mean when momentum is None; unbiased variance."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_((var * count / (count - 1)).to(self.running_var.dtype), factor)


def convert_group_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every `nn.BatchNorm2d` in `module` by a `GroupBatchNorm2d` sharing its parameters and buffers
    (as `nn.SyncBatchNorm.convert_sync_batchnorm` does for GPUs). Returns the converted module."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GroupBatchNorm2d):
        out = GroupBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_group_batchnorm(child))
    return module
