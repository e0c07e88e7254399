"""bn-lenet: LeNet on Fashion-MNIST with a from-scratch BatchNorm and PyTorch's nn.BatchNorm, side by side."""

__version__ = "0.1.0"
