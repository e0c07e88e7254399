"""LeNet's 2x2 average pooling (stride 2), written for speed on CPU: the same values as ``nn.AvgPool2d(2, 2)``.

PyTorch's CPU avg_pool2d was 16-18% of the profiled LeNet training step here (results/benchmark/cpu.md;
forward and backward 2.1 ms for conv1's 256x6x24x24 output). The mean of the four strided quarters and a backward that spreads a quarter of each
gradient over its 2x2 window do the same in ~7-18% less time per whole training step (interleaved A/B runs
on the 2-core CPU, scratch and nn.BatchNorm). Elsewhere (a GPU, where one kernel launch beats five) and for
odd heights or widths, ``F.avg_pool2d`` runs.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _AvgPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        quarters = x[..., 0::2, 0::2] + x[..., 1::2, 0::2]
        return quarters.add_(x[..., 0::2, 1::2]).add_(x[..., 1::2, 1::2]).mul_(0.25)

    @staticmethod
    def backward(ctx, grad):
        n, c, h, w = ctx.shape
        spread = (grad * 0.25).reshape(n, c, h // 2, 1, w // 2, 1).expand(n, c, h // 2, 2, w // 2, 2)
        return spread.reshape(n, c, h, w)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.ndim == 4 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
        return _AvgPool2x2.apply(x)
    return F.avg_pool2d(x, 2)


class AvgPool2x2(nn.Module):
    """``nn.AvgPool2d(2, 2)``, faster on CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)

    def extra_repr(self) -> str:
        return "kernel_size=2, stride=2"
