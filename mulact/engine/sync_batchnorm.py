"""BatchNorm synchronised across the ranks of a CPU (gloo) process group.

:class:`torch.nn.SyncBatchNorm` is what a multi-GPU run uses, but it has no CPU kernel (it
refuses CPU inputs), so a CPU ``torchrun`` job would normalise each rank's slice of the batch
with its own statistics: the result would depend on the number of ranks, and a rank holding
one image fails outright on the 1x1 pooled ASPP branch. This module provides the same
computation for CPU tensors with plain torch ops and one all-reduce in each direction:

- forward: per-channel sums of x and x² and the element count are summed over ranks, and
  every rank normalises with the global mean and (biased) variance; the running statistics
  are updated with the unbiased variance, as :class:`torch.nn.BatchNorm2d` does;
- backward: per-channel sums of dy and dy·x̂ are summed over ranks, giving each rank the
  input gradient of the sum of all ranks' losses; weight and bias get their local sums and
  DistributedDataParallel averages them with every other gradient.

With one process it is never used (``convert_sync_batchnorm_cpu`` is only applied when the
world is larger than one).
"""
from __future__ import annotations

import torch

from mulact import distributed as dist

__all__ = ["CPUSyncBatchNorm", "convert_sync_batchnorm_cpu"]


class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, C] + [1] * (x.dim() - 2)
        x64 = x.double()
        stats = torch.cat([x64.sum(dims), (x64 * x64).sum(dims),
                           torch.tensor([x.numel() // C], dtype=torch.float64)])
        dist.all_reduce_sum(stats, what="SyncBatchNorm statistics")
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C:2 * C] / n - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        xhat = ((x64 - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        y = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype))
        ctx.n = float(n)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar, _gn):
        xhat, weight, invstd = ctx.saved_tensors
        C = gy.shape[1]
        dims = [0] + list(range(2, gy.dim()))
        shape = [1, C] + [1] * (gy.dim() - 2)
        sum_gy = gy.sum(dims)
        sum_gy_xhat = (gy * xhat).sum(dims)
        both = torch.cat([sum_gy, sum_gy_xhat]).double()
        dist.all_reduce_sum(both, what="SyncBatchNorm gradients")
        g_mean = (both[:C] / ctx.n).to(gy.dtype).view(shape)
        g_xhat_mean = (both[C:] / ctx.n).to(gy.dtype).view(shape)
        scale = invstd.view(shape) * (weight.view(shape) if weight is not None else 1.0)
        grad_x = scale * (gy - g_mean - xhat * g_xhat_mean)
        grad_w = sum_gy_xhat if weight is not None else None
        grad_b = sum_gy if weight is not None else None
        return grad_x, grad_w, grad_b, None


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks (CPU tensors); see the module docstring."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"CPUSyncBatchNorm: expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x):
        if not (self.training and dist.world_size() > 1) or x.device.type != "cpu":
            return super().forward(x)
        y, mean, var, n = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (float(n) / max(float(n) - 1, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        return y


def convert_sync_batchnorm_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm layer by :class:`CPUSyncBatchNorm`, keeping parameters and buffers."""
    out = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm_cpu(child))
    return out
