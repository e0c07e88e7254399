"""Batch normalization from scratch: the d2l tutorial's layer, written to run correctly and fast.

Default semantics are the tutorial's:

    moving = momentum * moving + (1 - momentum) * batch      (momentum 0.9: weight on the OLD value)
    moving_var stores the biased batch variance (divide by n)
    eps = 1e-5

Where the tutorial is wrong for real use, this layer differs, on purpose:

1. Train/eval follows ``module.training`` (``net.train()`` / ``net.eval()``), as ``nn.BatchNorm`` does.
   The tutorial switches on ``torch.is_grad_enabled()``, so ``net.eval()`` did nothing to it and
   evaluating without ``torch.no_grad()`` silently used (and updated) the batch statistics.
2. ``moving_mean`` / ``moving_var`` are registered buffers updated in place. The tutorial re-binds
   plain attributes every step, so they were missing from ``state_dict`` (lost by a checkpoint),
   not moved by ``.to(device)``, and unusable under CUDA graphs (a replay reads fixed addresses).
3. A training batch with one value per channel raises ``ValueError`` (as ``nn.BatchNorm`` does);
   the tutorial silently normalized it to zeros (x - mean(x) == 0).
4. Input of the wrong rank or channel count raises ``ValueError`` naming the expected shape.

Options, to match PyTorch's conventions exactly: ``momentum=0.9`` here equals ``nn.BatchNorm``'s
``momentum=0.1`` (the two libraries weight opposite ends), and ``unbiased=True`` stores the unbiased
variance (divide by n - 1) in ``moving_var`` as ``nn.BatchNorm`` does. The normalization itself always
uses the biased batch variance, in every implementation.

Gamma and beta are stored as shape (C,) (as ``nn.BatchNorm``'s weight and bias), not the tutorial's
(1, C, 1, 1), so per-channel values read the same for both layers.

Two options from the chapter's exercises and the articles take a slower, plain-autograd path
(``variant_batch_norm``); the default layer never does:

- ``normalize`` ("lite BN"): "full" = (x - mean) / std; "mean" = x - mean (spread kept); "var" = x / std
  (mean kept; std is still the spread around the mean). Eval does the same with the moving statistics.
  Both moving statistics are kept up to date whatever the mode (precise BN and inspect see the same buffers).
- ``ghost_batch`` = g: in training, each consecutive group of g examples is normalized with its own
  statistics (a last, smaller group keeps its own too; a last group of ONE example joins the group before
  it, since one example has no variance in an (N, C) layer). The moving statistics take one update per
  batch, from the unweighted mean over the groups of each group's mean and of each group's variance (biased,
  or unbiased with that group's own n): exactly what N ranks each doing a normal BN step on its own slice
  of g examples would hold after averaging their moving statistics (local BN on N ranks == ghost batches
  of batch/N in one process). Eval uses the moving statistics, as always.
"""

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _per_channel(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a (C,) tensor so it broadcasts over (N, C) or (N, C, H, W)."""
    return t.view(1, -1) if ndim == 2 else t.view(1, -1, 1, 1)


def channel_dims(ndim: int) -> tuple:
    return (0,) if ndim == 2 else (0, 2, 3)


class _TrainingBatchNorm(torch.autograd.Function):
    """Training-mode normalization with batch statistics and its closed-form backward.

    Written out by hand for speed: autograd through the formula (var_mean, then four broadcast ops) keeps
    several full-size intermediates and runs a dozen full-size kernels, and var_mean over (N, H, W) is
    itself slow on CPU, slower than the two passes here; this keeps one tensor d = X - mean. Forward: sum,
    subtract, square, sum, multiply, add in place. Backward: two sums, two multiplies, an add and an addcmul
    in place, which beat their out-of-place forms on a CPU step; torch.addcmul with a broadcast first operand
    (out of place) is slower than a multiply and an add, so it is not used. (The measurements behind each
    choice: results/benchmark/NOTES.md.)
    Statistics are accumulated in at least fp32, so a bf16 input under autocast still gets fp32 statistics
    (as nn.BatchNorm); the output has the input's dtype. The variance is two-pass, mean first
    then the mean of squared deviations: the one-pass E[x^2] - E[x]^2 saves one kernel but drifted 1.2e-4
    from nn.BatchNorm's fp32 loss curve within 40 steps at lr 1.0, where two-pass stays within 1e-4.
    (Summing the squares with torch.linalg.vector_norm, which skips writing d * d, drifted 7e-3: its fp32
    accumulation is less exact than sum's.)
    """

    @staticmethod
    def forward(ctx, X, gamma, beta, eps):
        x = X if X.dtype in (torch.float32, torch.float64) else X.float()
        dims, n = channel_dims(x.ndim), x.numel() // x.shape[1]
        mean = x.sum(dims) / n
        d = x - _per_channel(mean, x.ndim)
        var = (d * d).sum(dims) / n
        invstd = torch.rsqrt(var + eps)
        scale = gamma.to(x.dtype) * invstd
        Y = (d * _per_channel(scale, x.ndim)).add_(_per_channel(beta.to(x.dtype), x.ndim))
        ctx.save_for_backward(d, invstd, scale)
        ctx.dtypes = X.dtype, gamma.dtype
        return Y.to(X.dtype), mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, _dmean, _dvar):
        d, invstd, scale = ctx.saved_tensors
        x_dtype, gamma_dtype = ctx.dtypes
        dy = dY.to(d.dtype)
        dims, n = channel_dims(d.ndim), d.numel() // d.shape[1]
        # With x_hat = d * invstd (d = x - mean): dbeta = sum(dy), dgamma = sum(dy * x_hat), and
        # dx = scale * (dy - dbeta / n - x_hat * dgamma / n), computed as (c + d * b) + dy * scale per channel.
        dbeta = dy.sum(dims)
        dgamma = (dy * d).sum(dims) * invstd
        b = -scale * invstd * dgamma / n
        c = -scale * dbeta / n
        dX = (d * _per_channel(b, d.ndim)).add_(_per_channel(c, d.ndim))
        dX.addcmul_(dy, _per_channel(scale, d.ndim))
        return dX.to(x_dtype), dgamma.to(gamma_dtype), dbeta.to(gamma_dtype), None


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.9, training=True,
               unbiased=False):
    """Normalize X (N, C) or (N, C, H, W) per channel; update moving statistics in place when training.

    gamma, beta, moving_mean, moving_var have shape (C,). Returns gamma * X_hat + beta.
    """
    if not training:
        # Inference: the moving statistics, never this batch's own (the batch may be a single example).
        scale = gamma * torch.rsqrt(moving_var + eps)
        shift = beta - moving_mean * scale
        return X * _per_channel(scale, X.ndim) + _per_channel(shift, X.ndim)

    n = X.numel() // X.shape[1]  # values per channel in this batch (a shape, so no device sync)
    if n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(X.shape)}: batch normalization needs at least 2 values per channel "
                         f"(use a batch size >= 2, or call model.eval() for single examples)")
    Y, mean, var = _TrainingBatchNorm.apply(X, gamma, beta, eps)
    with torch.no_grad():
        # In place, so the buffers keep their identity (state_dict, .to(), CUDA graphs).
        batch_var = var * (n / (n - 1)) if unbiased else var
        moving_mean.lerp_(mean.to(moving_mean.dtype), 1.0 - momentum)  # == momentum * moving + (1 - momentum) * batch
        moving_var.lerp_(batch_var.to(moving_var.dtype), 1.0 - momentum)
    return Y


def ghost_sizes(n: int, ghost_batch: int) -> list:
    """Sizes of the consecutive ghost groups of a batch of n examples (see the module docstring)."""
    if not ghost_batch or n <= ghost_batch:
        return [n]
    sizes = [ghost_batch] * (n // ghost_batch) + ([n % ghost_batch] if n % ghost_batch else [])
    if sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def _normalized(x, mean, var, gamma, beta, eps, normalize):
    """gamma * x_hat + beta with x_hat as ``normalize`` says (full, mean, var), per channel."""
    if normalize != "var":
        x = x - _per_channel(mean, x.ndim)
    if normalize != "mean":
        x = x * _per_channel(torch.rsqrt(var + eps), x.ndim)
    return x * _per_channel(gamma.to(x.dtype), x.ndim) + _per_channel(beta.to(x.dtype), x.ndim)


def variant_batch_norm(X, gamma, beta, moving_mean, moving_var, eps=1e-5, momentum=0.9, training=True,
                       unbiased=False, normalize="full", ghost_batch=0):
    """``batch_norm`` with lite BN (``normalize``) and ghost batches (``ghost_batch``), by plain autograd.
    Statistics in at least fp32, as ``batch_norm``."""
    if not training:
        x = X if X.dtype in (torch.float32, torch.float64) else X.float()
        return _normalized(x, moving_mean.to(x.dtype), moving_var.to(x.dtype), gamma, beta, eps,
                           normalize).to(X.dtype)
    dims, outs, means, variances = channel_dims(X.ndim), [], [], []
    for part in X.split(ghost_sizes(X.shape[0], ghost_batch)):
        n = part.numel() // part.shape[1]
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got a (ghost) batch of "
                             f"shape {tuple(part.shape)}: batch normalization needs at least 2 values per channel")
        x = part if part.dtype in (torch.float32, torch.float64) else part.float()
        var, mean = torch.var_mean(x, dim=dims, correction=0)  # normalization: always the biased variance
        outs.append(_normalized(x, mean, var, gamma, beta, eps, normalize).to(X.dtype))
        means.append(mean.detach())
        variances.append(var.detach() * (n / (n - 1)) if unbiased else var.detach())
    with torch.no_grad():
        moving_mean.lerp_(torch.stack(means).mean(0).to(moving_mean.dtype), 1.0 - momentum)
        moving_var.lerp_(torch.stack(variances).mean(0).to(moving_var.dtype), 1.0 - momentum)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class BatchNorm(nn.Module):
    """Scratch batch normalization for (N, C) (``num_dims=2``) or (N, C, H, W) (``num_dims=4``) input.

    See the module docstring for how it differs from the tutorial's layer and from ``nn.BatchNorm``.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.9,
                 unbiased: bool = False, normalize: str = "full", ghost_batch: int = 0):
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (N, C) or 4 (N, C, H, W), got {num_dims}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (weight kept on the old moving value), got {momentum}")
        if normalize not in ("full", "mean", "var") or ghost_batch == 1 or ghost_batch < 0:
            raise ValueError(f"normalize must be full, mean or var and ghost_batch 0 or >= 2, got {normalize!r}, "
                             f"{ghost_batch}")
        self.num_features, self.num_dims = num_features, num_dims
        self.eps, self.momentum, self.unbiased = eps, momentum, unbiased
        self.normalize, self.ghost_batch = normalize, ghost_batch
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_var", torch.ones(num_features))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.ndim != self.num_dims or X.shape[1] != self.num_features:
            layout = "(N, C)" if self.num_dims == 2 else "(N, C, H, W)"
            raise ValueError(f"BatchNorm({self.num_features}, num_dims={self.num_dims}) expects {layout} input "
                             f"with C={self.num_features}, got shape {tuple(X.shape)}")
        if self.normalize != "full" or self.ghost_batch:  # the options' slower path
            return variant_batch_norm(X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=self.eps,
                                      momentum=self.momentum, training=self.training, unbiased=self.unbiased,
                                      normalize=self.normalize, ghost_batch=self.ghost_batch)
        return batch_norm(X, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=self.eps,
                          momentum=self.momentum, training=self.training, unbiased=self.unbiased)

    def extra_repr(self) -> str:
        extra = (f", normalize={self.normalize}" if self.normalize != "full" else "") + \
                (f", ghost_batch={self.ghost_batch}" if self.ghost_batch else "")
        return (f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, momentum={self.momentum}, "
                f"unbiased={self.unbiased}{extra}")
