"""The tutorial's LeNet with scratch, built-in or no batch normalization, and its BN layers' gamma/beta.

Layer names read as the network does: ``conv1.bn``, ``conv2.bn``, ``fc1.bn``, ``fc2.bn``.
"""

from collections import OrderedDict

import torch
from torch import nn

from .batchnorm import BatchNorm
from .pool import AvgPool2x2

NORMS = ("scratch", "torch", "none")


def _norm_layer(norm: str, num_features: int, num_dims: int, bn_options: dict) -> list:
    if norm == "scratch":
        return [("bn", BatchNorm(num_features, num_dims, **bn_options))]
    if norm == "torch":
        cls = nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d
        return [("bn", cls(num_features, **bn_options))]  # PyTorch's defaults unless options say otherwise
    return []


def lenet(norm: str = "scratch", **bn_options) -> nn.Sequential:
    """The d2l BN LeNet: conv(1,6,5) BN sigmoid avgpool, conv(6,16,5) BN sigmoid avgpool, flatten,
    linear(256,120) BN sigmoid, linear(120,84) BN sigmoid, linear(84,10). Input (N, 1, 28, 28).

    ``bn_options`` go to every BN layer (e.g. ``momentum``, ``unbiased`` for the scratch layer).
    The avg-pool is ``pool.AvgPool2x2``: nn.AvgPool2d(2, 2)'s values, faster on CPU.
    Weights are Xavier-uniform initialized as in the tutorial (see ``init_weights``).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")

    def block(*layers):
        return nn.Sequential(OrderedDict(layers))

    net = nn.Sequential(OrderedDict([
        ("conv1", block(("conv", nn.Conv2d(1, 6, kernel_size=5)), *_norm_layer(norm, 6, 4, bn_options),
                        ("act", nn.Sigmoid()), ("pool", AvgPool2x2()))),
        ("conv2", block(("conv", nn.Conv2d(6, 16, kernel_size=5)), *_norm_layer(norm, 16, 4, bn_options),
                        ("act", nn.Sigmoid()), ("pool", AvgPool2x2()))),
        ("flatten", nn.Flatten()),
        ("fc1", block(("linear", nn.Linear(16 * 4 * 4, 120)), *_norm_layer(norm, 120, 2, bn_options),
                      ("act", nn.Sigmoid()))),
        ("fc2", block(("linear", nn.Linear(120, 84)), *_norm_layer(norm, 84, 2, bn_options),
                      ("act", nn.Sigmoid()))),
        ("fc3", nn.Linear(84, 10)),
    ]))
    init_weights(net)
    return net


def init_weights(net: nn.Module) -> None:
    """The tutorial's init: Xavier-uniform on Conv2d/Linear weights only; biases and BN keep defaults."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)


def is_bn(module: nn.Module) -> bool:
    return isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm))


def bn_layers(net: nn.Module) -> dict:
    """{name: layer} for every BN layer, scratch or built-in, in network order."""
    return {name: m for name, m in net.named_modules() if is_bn(m)}


def gamma_beta(layer: nn.Module) -> tuple:
    """(gamma, beta) of a scratch or built-in BN layer (PyTorch calls them weight and bias)."""
    if isinstance(layer, BatchNorm):
        return layer.gamma, layer.beta
    return layer.weight, layer.bias


def bn_params(net: nn.Module) -> dict:
    """{layer_name: {"gamma": [...], "beta": [...]}} per channel for every BN layer (host floats)."""
    out = {}
    for name, layer in bn_layers(net).items():
        gamma, beta = gamma_beta(layer)
        out[name] = {"gamma": gamma.detach().float().cpu().tolist(), "beta": beta.detach().float().cpu().tolist()}
    return out


def moving_stats(layer: nn.Module) -> tuple:
    """(moving mean, moving var) buffers of a scratch or built-in BN layer."""
    if isinstance(layer, BatchNorm):
        return layer.moving_mean, layer.moving_var
    return layer.running_mean, layer.running_var


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy conv/linear/BN parameters and moving statistics between two LeNets with different BN kinds."""
    for (name_s, p_s), (name_d, p_d) in zip(_tensors(src), _tensors(dst), strict=True):
        if p_s.shape != p_d.shape:
            raise ValueError(f"cannot copy {name_s} {tuple(p_s.shape)} into {name_d} {tuple(p_d.shape)}")
        p_d.copy_(p_s)


def _tensors(net: nn.Module):
    """Parameters and moving statistics in one order that both BN kinds share."""
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            yield f"{name}.weight", m.weight
            yield f"{name}.bias", m.bias
        elif is_bn(m):
            for label, t in zip(("gamma", "beta"), gamma_beta(m)):
                yield f"{name}.{label}", t
            for label, t in zip(("moving_mean", "moving_var"), moving_stats(m)):
                yield f"{name}.{label}", t
