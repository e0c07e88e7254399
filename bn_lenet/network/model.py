"""The tutorial's LeNet with scratch, built-in, layer, group or no normalization, and its norm layers' gamma/beta.

Layer names read as the network does: ``conv1.bn``, ``conv2.bn``, ``fc1.bn``, ``fc2.bn`` for batch norm
(scratch or torch); ``conv1.ln``, ... for layer norm and ``conv1.gn``, ... for group norm (both nn.GroupNorm,
whose gamma/beta are ``weight``/``bias``). ``from_config`` builds the network a run's config describes.
"""

from collections import OrderedDict

import torch
from torch import nn

from .batchnorm import BatchNorm
from .options import (ACTIVATIONS, BATCH_NORMS, INITS, LAYERS, NORMS, PLACEMENTS, carries_norm, effective,
                      torch_momentum)
from .pool import AvgPool2x2

CHILD_NAME = {"scratch": "bn", "torch": "bn", "layer": "ln", "group": "gn"}


def _norm_layer(norm: str, num_features: int, num_dims: int, bn_options: dict) -> list:
    if norm == "scratch":
        return [("bn", BatchNorm(num_features, num_dims, **bn_options))]
    if norm == "torch":
        cls = nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d
        return [("bn", cls(num_features, **bn_options))]  # PyTorch's defaults unless options say otherwise
    if norm in ("layer", "group"):
        # GroupNorm normalizes each example over its group's channels (and positions), in (N, C) as in
        # (N, C, H, W); layer norm is one group. No batch or moving statistics: train and eval are the same.
        groups = 1 if norm == "layer" else bn_options.get("groups", 2)
        return [(CHILD_NAME[norm], nn.GroupNorm(groups, num_features, eps=bn_options.get("eps", 1e-5)))]
    return []


def lenet(norm: str = "scratch", *, placement: str = "before", norm_layers=LAYERS, activation: str = "sigmoid",
          bias: bool = True, scale: bool = True, center: bool = True, dropout: float = 0.0, init: str = "xavier",
          init_scale: float = 1.0, **bn_options) -> nn.Sequential:
    """The d2l BN LeNet: conv(1,6,5) BN sigmoid avgpool, conv(6,16,5) BN sigmoid avgpool, flatten,
    linear(256,120) BN sigmoid, linear(120,84) BN sigmoid, linear(84,10). Input (N, 1, 28, 28).

    ``bn_options`` go to every BN layer (e.g. ``momentum``, ``unbiased`` for the scratch layer; ``eps`` and
    ``groups`` for layer/group). The other options are the config's ``model.*`` and ``bn.scale``/``bn.center``
    (see config.py); their defaults build the tutorial's network. ``placement="after"`` puts the norm right
    after the activation (conv, act, norm, pool). ``bias=False`` drops the bias of the layers that carry a norm.
    The avg-pool is ``pool.AvgPool2x2``: nn.AvgPool2d(2, 2)'s values, faster on CPU.
    ``dropout`` > 0 adds ``nn.Dropout`` (named ``drop``) at the end of the fc1 and fc2 blocks: on the hidden units
    fc2 and fc3 read (after the activation; after the norm with placement "after"). At 0 there is no such module.
    Weights are Xavier-uniform initialized as in the tutorial, or as ``init`` says, times ``init_scale``
    (see ``init_weights``).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    if placement not in PLACEMENTS or activation not in ACTIVATIONS or not set(norm_layers) <= set(LAYERS) \
            or init not in INITS or not 0 <= dropout < 1:
        raise ValueError(f"bad option: placement {placement!r}, activation {activation!r}, norm_layers "
                         f"{norm_layers!r}, init {init!r}, dropout {dropout!r}")
    act = nn.Sigmoid if activation == "sigmoid" else nn.ReLU

    def block(name, layer_name, make_layer, channels, num_dims, pool, drop=False):
        has_norm = norm != "none" and name in norm_layers
        layers = [(layer_name, make_layer(bias or not has_norm))]  # conv/linear first: they draw the init RNG
        norm_part = _norm_layer(norm, channels, num_dims, bn_options) if has_norm else []
        for _, layer in norm_part:
            fix_affine(layer, scale, center)
        if placement == "before":
            layers += [*norm_part, ("act", act())]
        else:
            layers += [("act", act()), *norm_part]
        if drop and dropout > 0:  # none at 0: the default network's modules stay the tutorial's
            layers.append(("drop", nn.Dropout(dropout)))
        return nn.Sequential(OrderedDict(layers + ([("pool", AvgPool2x2())] if pool else [])))

    net = nn.Sequential(OrderedDict([
        ("conv1", block("conv1", "conv", lambda b: nn.Conv2d(1, 6, kernel_size=5, bias=b), 6, 4, True)),
        ("conv2", block("conv2", "conv", lambda b: nn.Conv2d(6, 16, kernel_size=5, bias=b), 16, 4, True)),
        ("flatten", nn.Flatten()),
        ("fc1", block("fc1", "linear", lambda b: nn.Linear(16 * 4 * 4, 120, bias=b), 120, 2, False, drop=True)),
        ("fc2", block("fc2", "linear", lambda b: nn.Linear(120, 84, bias=b), 84, 2, False, drop=True)),
        ("fc3", nn.Linear(84, 10)),
    ]))
    init_weights(net, init, init_scale)
    return net


def from_config(cfg) -> nn.Sequential:
    """The network a run with config ``cfg`` (validated) trains. Draws its initial weights from torch's RNG:
    seed it first. The default config builds exactly ``lenet("scratch")``."""
    m, bn, norm = cfg.model, cfg.bn, cfg.model.norm
    bn_options = {}
    if norm in BATCH_NORMS or norm in ("layer", "group"):
        eff = effective(cfg)
        if norm == "scratch":
            bn_options = dict(eff, normalize=bn.normalize, ghost_batch=bn.ghost_batch)
        elif norm == "torch":  # nn.BatchNorm's moving variance is always unbiased (validation made sure)
            bn_options = {"eps": eff["eps"], "momentum": torch_momentum(eff["momentum"])}
        else:
            bn_options = {"eps": eff["eps"], "groups": bn.groups}
    return lenet(norm, placement=m.placement, norm_layers=tuple(carries_norm(cfg)), activation=m.activation,
                 bias=m.bias, scale=bn.scale, center=bn.center, dropout=m.dropout, init=m.init,
                 init_scale=m.init_scale, **bn_options)


def fix_affine(layer: nn.Module, scale: bool = True, center: bool = True) -> None:
    """``scale=False``: gamma fixed at 1; ``center=False``: beta fixed at 0. The parameter becomes a buffer
    of the same name (not requires_grad=False): then it is not in ``parameters()``, so neither the optimizer
    nor a parameter count sees it, no gradient is computed for it, and it stays in ``state_dict`` under the
    same key (conv1.bn.gamma), moved by ``.to()`` and shown by inspect like a trained one."""
    for keep, name in ((scale, "gamma"), (center, "beta")):
        if keep:
            continue
        attr = name if isinstance(layer, BatchNorm) else {"gamma": "weight", "beta": "bias"}[name]
        value = getattr(layer, attr).detach().clone()
        delattr(layer, attr)
        layer.register_buffer(attr, value)


def init_weights(net: nn.Module, init: str = "xavier", scale: float = 1.0) -> None:
    """The initial Conv2d/Linear weights (model.init, model.init_scale); biases and BN keep PyTorch's defaults.

    xavier: the tutorial's, Xavier-uniform (Glorot), U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    torch: what nn.Conv2d/nn.Linear drew when built (kaiming-uniform with a = sqrt(5): U(-b, b), b = 1/sqrt(fan_in)).
    kaiming: He normal, N(0, 2 / fan_in) (fan_in mode, ReLU's gain sqrt(2), whatever model.activation is).
    ``scale`` then multiplies every such weight (1: left as drawn)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            elif init == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if scale != 1.0:
                with torch.no_grad():
                    m.weight.mul_(scale)


def is_bn(module: nn.Module) -> bool:
    return isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm))


def is_norm(module: nn.Module) -> bool:
    """A BN layer (scratch or built-in) or a layer/group norm."""
    return is_bn(module) or isinstance(module, nn.GroupNorm)


def bn_layers(net: nn.Module) -> dict:
    """{name: layer} for every BN layer, scratch or built-in, in network order (the layers with moving
    statistics: precise BN and eval.batch_stats work on these)."""
    return {name: m for name, m in net.named_modules() if is_bn(m)}


def norm_modules(net: nn.Module) -> dict:
    """{name: layer} for every norm layer of any kind (BN, layer, group), in network order."""
    return {name: m for name, m in net.named_modules() if is_norm(m)}


def gamma_beta(layer: nn.Module) -> tuple:
    """(gamma, beta) of a norm layer (PyTorch's BN and GroupNorm call them weight and bias)."""
    if isinstance(layer, BatchNorm):
        return layer.gamma, layer.beta
    return layer.weight, layer.bias


def bn_params(net: nn.Module) -> dict:
    """{layer_name: {"gamma": [...], "beta": [...]}} per channel for every norm layer (host floats)."""
    out = {}
    for name, layer in norm_modules(net).items():
        gamma, beta = gamma_beta(layer)
        out[name] = {"gamma": gamma.detach().float().cpu().tolist(), "beta": beta.detach().float().cpu().tolist()}
    return out


def moving_stats(layer: nn.Module) -> tuple:
    """(moving mean, moving var) buffers of a scratch or built-in BN layer."""
    if isinstance(layer, BatchNorm):
        return layer.moving_mean, layer.moving_var
    return layer.running_mean, layer.running_var


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters (a gamma/beta fixed by bn.scale/bn.center is a buffer, not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


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
            if m.bias is not None:
                yield f"{name}.bias", m.bias
        elif is_bn(m):
            for label, t in zip(("gamma", "beta"), gamma_beta(m)):
                yield f"{name}.{label}", t
            for label, t in zip(("moving_mean", "moving_var"), moving_stats(m)):
                yield f"{name}.{label}", t
