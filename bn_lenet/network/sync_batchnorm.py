"""The scratch BatchNorm synced over a data-parallel job: statistics of the global batch, on CPU (gloo) or GPU.

With N processes each holding a slice of the batch, synced BN normalizes with the mean and variance of the
whole batch, and its backward is exact too: N synced processes compute the gradients one process computes
on the global batch (tests/test_distributed.py checks both against autograd on the concatenated batch).
nn.SyncBatchNorm does this for nn.BatchNorm, on CUDA only; this is the scratch layer's, on any backend.

Forward, one collective per layer: each process computes its slice's count, mean and sum of squared
deviations M2 (two-pass, as the one-process layer), all-gathers them, and every process combines them in
rank order with the parallel-variance formula (Chan et al.): mean = sum n_r mean_r / n,
M2 = sum M2_r + sum n_r (mean_r - mean)^2. Not the one-collective alternative of all-reducing sum x and
sum x^2: var = E[x^2] - E[x]^2 cancels catastrophically in fp32 when the mean is large against the spread
(batchnorm.py measured the one-pass form drifting 1.2e-4 in loss within 40 steps), while every term here is
a sum of non-negative numbers. And not two all-reduces (sum, then sum of squared deviations from the global
mean), which would be exact too but cost a second round trip per layer. Every process combines the same
gathered numbers in the same order, so all get bitwise the same statistics, and the same moving statistics.

Backward, one collective per layer: dx needs sum(dy) and sum(dy * x_hat) over the global batch, all-reduced
together. gamma's and beta's own gradients stay local: DDP averages parameter gradients over the processes
as it does for every other weight.
"""

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

from .batchnorm import BatchNorm, _per_channel, channel_dims


def _gather(t: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.stack(parts)


class _SyncedTrainingBatchNorm(torch.autograd.Function):
    """Training-mode normalization with the global batch's statistics, and its closed-form backward."""

    @staticmethod
    def forward(ctx, X, gamma, beta, eps, group):
        x = X if X.dtype in (torch.float32, torch.float64) else X.float()  # statistics in >= fp32
        dims, channels = channel_dims(x.ndim), x.shape[1]
        n_local = x.numel() // channels
        if n_local:
            local_mean = x.sum(dims) / n_local
            d = x - _per_channel(local_mean, x.ndim)
            local_m2 = (d * d).sum(dims)
        else:  # an empty slice adds nothing (weight n_r = 0)
            local_mean = local_m2 = x.new_zeros(channels)
        parts = _gather(torch.cat([x.new_full((1,), n_local), local_mean, local_m2]), group)
        counts, means, m2s = parts[:, :1], parts[:, 1:channels + 1], parts[:, channels + 1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n
        invstd = torch.rsqrt(var + eps)
        scale = gamma.to(x.dtype) * invstd
        d = x - _per_channel(mean, x.ndim)
        Y = (d * _per_channel(scale, x.ndim)).add_(_per_channel(beta.to(x.dtype), x.ndim))
        ctx.save_for_backward(d, invstd, scale, n)
        ctx.dtypes, ctx.group = (X.dtype, gamma.dtype), group
        return Y.to(X.dtype), mean, var, n

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, _dmean, _dvar, _dn):
        d, invstd, scale, n = ctx.saved_tensors
        x_dtype, gamma_dtype = ctx.dtypes
        dy = dY.to(d.dtype)
        dims, channels = channel_dims(d.ndim), d.shape[1]
        local = torch.cat([dy.sum(dims), (dy * d).sum(dims)])  # this slice's sum dy, sum dy * (x - mean)
        total = local.clone()
        dist.all_reduce(total, group=ctx.group)
        dbeta, dgamma = total[:channels], total[channels:] * invstd
        # As batchnorm.py: dx = scale * (dy - dbeta / n - x_hat * dgamma / n), with n and the sums global.
        b = -scale * invstd * dgamma / n
        c = -scale * dbeta / n
        dX = (d * _per_channel(b, d.ndim)).add_(_per_channel(c, d.ndim))
        dX.addcmul_(dy, _per_channel(scale, d.ndim))
        local_dbeta, local_dgamma = local[:channels], local[channels:] * invstd
        return dX.to(x_dtype), local_dgamma.to(gamma_dtype), local_dbeta.to(gamma_dtype), None, None


def synced_batch_norm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.9, unbiased=False,
                      group=None):
    """batchnorm.batch_norm in training mode, with the statistics of the batch spread over ``group``."""
    Y, mean, var, n = _SyncedTrainingBatchNorm.apply(X, gamma, beta, eps, group or dist.group.WORLD)
    with torch.no_grad():
        batch_var = var * (n / (n - 1)) if unbiased else var  # n is a tensor: no host sync
        moving_mean.lerp_(mean.to(moving_mean.dtype), 1.0 - momentum)
        moving_var.lerp_(batch_var.to(moving_var.dtype), 1.0 - momentum)
    return Y


class SyncedBatchNorm(BatchNorm):
    """The scratch BatchNorm, synced over ``group`` in training mode. Same parameters and buffers (a
    checkpoint loads into either); eval mode is the plain layer's (moving statistics, no communication)."""

    group = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(X)
        if X.ndim != self.num_dims or X.shape[1] != self.num_features:
            return super().forward(X)  # its shape error
        return synced_batch_norm(X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=self.eps,
                                 momentum=self.momentum, unbiased=self.unbiased, group=self.group)


def convert(model: nn.Module, group) -> nn.Module:
    """Sync every BN layer of ``model`` over ``group``, in place: the scratch layer becomes SyncedBatchNorm,
    nn.BatchNorm becomes nn.SyncBatchNorm (PyTorch's conversion; CUDA only)."""
    for m in model.modules():
        if type(m) is BatchNorm:
            m.__class__ = SyncedBatchNorm  # same state; only forward differs
            m.group = group
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)


class _LocalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """nn.SyncBatchNorm's state with nn.BatchNorm's forward, for (N, C) and (N, C, H, W) alike."""

    def _check_input_dim(self, input):
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2D or 4D input (got {input.dim()}D input)")


def local_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BN layers are not synced (precise BN runs whole batches in each process)."""
    groups = {}  # a process group cannot be deep-copied: set aside while copying
    for m in model.modules():
        for attr in ("group", "process_group"):
            if attr in vars(m):
                groups[(m, attr)] = vars(m)[attr]
                setattr(m, attr, None)
    try:
        local = copy.deepcopy(model)
    finally:
        for (m, attr), g in groups.items():
            setattr(m, attr, g)
    for m in local.modules():
        if isinstance(m, SyncedBatchNorm):
            m.__class__ = BatchNorm
            vars(m).pop("group", None)
        elif isinstance(m, nn.SyncBatchNorm):
            m.__class__ = _LocalBatchNorm
    return local
