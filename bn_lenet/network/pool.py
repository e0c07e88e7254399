"""LeNet's 2x2 average pooling (stride 2), written for speed on CPU: the same values as ``nn.AvgPool2d(2, 2)``.

PyTorch's CPU avg_pool2d was a large share of the profiled LeNet training step here (conv1's pool above all).
The mean of the four strided quarters, with a backward that spreads a quarter of each gradient over its 2x2
window, makes the whole CPU training step faster; spreading with repeat_interleave beats copying an expanded
view. (The profile and the A/B runs behind both: results/benchmark/NOTES.md.)
Elsewhere (a GPU, where one kernel launch beats five) and for odd heights or widths, ``F.avg_pool2d`` runs.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _AvgPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        quarters = x[..., 0::2, 0::2] + x[..., 1::2, 0::2]
        return quarters.add_(x[..., 0::2, 1::2]).add_(x[..., 1::2, 1::2]).mul_(0.25)

    @staticmethod
    def backward(ctx, grad):
        # Each output's gradient, quartered, to the 4 inputs of its window: repeat_interleave along W then H
        # (faster here than materializing an expanded 6-d view, and than avg_pool2d's own backward).
        return (grad * 0.25).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)


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
