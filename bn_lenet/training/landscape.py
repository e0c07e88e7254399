"""log.landscape: how smooth the loss is along the step SGD actually takes, and internal covariate shift, as
Santurkar et al. 2018 ("How Does Batch Normalization Help Optimization?") measure them; ``landscape.jsonl``.

Every ``log.landscape_every`` steps, before the step's update, at the current weights w and on the step's own
batch, with d = the SGD step (-lr * g, plus -lr * weight_decay * w on the decayed weights; g the batch's
gradient) and the points w + c * d for c in ``SCALES``:

    loss               L(w), the batch's loss (what the step itself computes)
    loss_min, loss_max the least and largest L(w + c d) over the scales: the loss variation along the step
    grad_norm          ||g||; step_norm ||d||
    grad_change        max over c of ||g(w + c d) - g(w)||: gradient predictiveness (small = predictive)
    beta_smoothness    max over c of ||g(w + c d) - g(w)|| / ||c d||: the effective beta-smoothness
    ics_l2, ics_cos    per layer i (its conv/linear weight W_i), {layer: value}: G = dL/dW_i at w, G' = dL/dW_i
                       after the layers below i (all their parameters) took their step d, the rest at w;
                       ||G - G'|| and cos(G, G') (Santurkar et al.'s definition 2.1). The first layer has no
                       layer below (G' = G) and is left out.

Norms are L2 over every trained parameter (weights, biases, gamma, beta). Non-finite values are written as null.

It never changes training: everything runs on a copy of the model (deepcopy: parameters, BN moving statistics),
in train mode (BN with the batch's statistics), and the RNG is put back, so the step draws the same dropout mask
as without it. Each forward of the measurement starts from that same RNG state too: with model.dropout every
point is measured with the step's own mask, and g is exactly the step's gradient.

Cost: 1 + len(SCALES) + (layers - 1) forward/backward passes per measurement (10 for LeNet), about 10 training
steps' worth; README states the measured cost.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .step import autocast

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the SGD step, around the step itself


def _rng_reset(device: torch.device):
    """A function that puts the RNG (CPU, and the CUDA device's) back to its state now."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset():
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
    return reset


def _norm(tensors) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def layer_weights(model: nn.Module) -> list:
    """[(layer, index of its conv/linear weight in model.parameters(), indices of all its parameters)] for each
    top-level layer holding a conv/linear weight, in network order (LeNet: conv1, conv2, fc1, fc2, fc3)."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    layers = []
    for name, child in model.named_children():
        weights = [m.weight for m in child.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if weights:
            layers.append((name, index[id(weights[0])], [index[id(p)] for p in child.parameters()]))
    return layers


def sgd_step(model: nn.Module, optimizer, weights: list, grads: list) -> list:
    """The update plain SGD makes from ``grads``, per parameter of model.parameters() (its group's lr and
    weight_decay: d = -lr * (g + weight_decay * w))."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    steps = []
    for p, w, g in zip(model.parameters(), weights, grads):
        group = group_of[id(p)]
        decay = group.get("weight_decay", 0.0)
        steps.append(-group["lr"] * (g + decay * w if decay else g))
    return steps


def measure(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32",
            scales=SCALES, loss_fn=F.cross_entropy) -> dict:
    """The figures above for ``model`` (untouched) at its current weights on this batch; ``optimizer``: the
    run's, for the lr and weight decay of each parameter. One host sync."""
    reset = _rng_reset(images.device)
    probe = copy.deepcopy(model)
    probe.train()
    params = list(probe.parameters())

    def at(weights, wrt):
        """(loss, gradients of ``wrt``) with the probe's parameters set to ``weights``, same RNG each time."""
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        reset()
        with autocast(images.device, precision):
            out = probe(images)
        loss = loss_fn(out.float() if precision == "bf16" else out, labels)  # as train_step (fp32: the same)
        return loss.detach(), torch.autograd.grad(loss, wrt)

    try:
        w = [p.detach().clone() for p in params]
        loss, g = at(w, params)
        d = sgd_step(model, optimizer, w, g)
        step_norm = _norm(d)
        losses, changes, smooth = [], [], []
        for c in scales:
            loss_c, g_c = at([wi + c * di for wi, di in zip(w, d)], params)
            change = _norm([a - b for a, b in zip(g_c, g)])
            losses.append(loss_c)
            changes.append(change)
            smooth.append(change / (c * step_norm))
        layers = layer_weights(probe)
        ics_l2, ics_cos = [], []
        below = set()
        for k, (name, weight, owned) in enumerate(layers):
            if k:  # the layers below took their step; this one and those above did not
                moved = [wi + di if i in below else wi for i, (wi, di) in enumerate(zip(w, d))]
                _, (g_moved,) = at(moved, [params[weight]])
                G, G2 = g[weight].flatten(), g_moved.flatten()
                ics_l2.append(torch.linalg.vector_norm(G - G2))
                ics_cos.append(torch.dot(G, G2) / (torch.linalg.vector_norm(G) * torch.linalg.vector_norm(G2)))
            below.update(owned)
    finally:
        reset()  # the training step draws what it would have drawn without the measurement
    losses = torch.stack(losses)
    values = torch.stack([loss, losses.min(), losses.max(), _norm(g), step_norm, torch.stack(changes).max(),
                          torch.stack(smooth).max(), *ics_l2, *ics_cos]).tolist()  # the one host sync
    values = [v if math.isfinite(v) else None for v in values]
    names = [name for name, _, _ in layers[1:]]
    n = len(names)
    head = dict(zip(("loss", "loss_min", "loss_max", "grad_norm", "step_norm", "grad_change", "beta_smoothness"),
                    values))
    return {**head, "ics_l2": dict(zip(names, values[7:7 + n])), "ics_cos": dict(zip(names, values[7 + n:]))}


class Landscape:
    """The rows of landscape.jsonl: fit() asks ``due(step)`` before each step (1-based, counted over the run) and
    calls ``measure`` when it is; a run directory saves ``rows`` with each epoch (and in the checkpoint)."""

    file = "landscape.jsonl"

    def __init__(self, every: int):
        self.every = every
        self.rows = []

    def due(self, step: int) -> bool:
        return (step - 1) % self.every == 0

    def measure(self, model, optimizer, images, labels, step: int, epoch: int, precision: str = "fp32") -> None:
        self.rows.append({"step": step, "epoch": epoch, **measure(model, optimizer, images, labels, precision)})
