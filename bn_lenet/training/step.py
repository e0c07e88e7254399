"""One SGD step, ``train_step``, and the bf16 autocast it runs under: what fit() (train.py) runs eagerly for
every batch and what graph_step.py captures and replays from a CUDA graph. Its own module because both build on
it: train.py imports graph_step.py, and neither imports the other back.
"""

import contextlib

import torch
import torch.nn.functional as F


def autocast(device: torch.device, precision: str):
    """bf16 autocast for conv/linear; our BN computes its statistics in fp32 (see batchnorm.py), as
    nn.BatchNorm does. No weight-cast cache: LeNet casts each weight once per forward anyway, and capturing
    the step in a CUDA graph (graph_step.py) needs it off."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def train_step(model, optimizer, images, labels, precision="fp32", grad_norms=None, weight=1.0):
    """One SGD step; returns (summed loss over the batch, correct count), both still on the device.
    ``grad_norms`` (a GradNorms, or None) adds this step's gradient norms, before the update. ``weight`` scales
    the gradient: a data-parallel process's share of the global batch (distributed.py)."""
    with autocast(images.device, precision):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)  # mean over the batch, as the tutorial
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    if grad_norms is not None:
        grad_norms.add()
    optimizer.step()
    return loss.detach() * labels.shape[0], (logits.argmax(dim=1) == labels).sum()
