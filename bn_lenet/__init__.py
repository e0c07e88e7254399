"""bn-lenet: LeNet on Fashion-MNIST with a from-scratch BatchNorm and PyTorch's nn.BatchNorm, side by side.

The public API, for notebooks and scripts (README: "Use it from Python / a notebook")::

    train_lenet(config=None, overrides=(), out=None, plot=False, progress=None, data=None) -> RunResult
    resolve(path=None, overrides=())          the config a run uses (bn_lenet.training.config.Config)
    load_dataset(root=None)                   Fashion-MNIST as uint8 tensors
    lenet(norm="scratch" | "torch" | "none")  the tutorial's network
    BatchNorm, batch_norm                     the from-scratch layer and its functional form
    bn_params(model)                          {layer: {"gamma": [...], "beta": [...]}} of every BN layer

Each name is imported on first use, so ``import bn_lenet`` stays light (no torch until needed).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # name -> the module that defines it
    "train_lenet": "api", "RunResult": "api",
    "resolve": "training.config",
    "load_dataset": "training.data",
    "lenet": "network.model", "bn_params": "network.model",
    "BatchNorm": "network.batchnorm", "batch_norm": "network.batchnorm",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bn_lenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
