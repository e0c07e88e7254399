"""The training loop: fit(), evaluate(), re-estimating BN statistics ("precise BN"), test accuracy with batch
statistics (eval.batch_stats) and gradient norms (log.grad_norms).

Metrics follow the tutorial: train loss and accuracy are averages over the epoch's batches in train mode
(the model changes while they are measured), test accuracy is measured in eval mode after the epoch,
examples/sec counts the training steps only (not data preparation or evaluation).

Speed: the data already lives on the device; loss and correct counts accumulate there and are read once
per epoch, so nothing inside an epoch waits for the device (the progress bar, when shown, reads them
every ``PROGRESS_EVERY`` steps). The fast path, each piece measured by ``bn-lenet benchmark``
(results/benchmark/): the scratch BN's hand-written backward (batchnorm.py); LeNet's own 2x2 avg-pool on
CPU (pool.py); ``train.compile`` compiles the
model for the full-size batches, the last partial batch runs eagerly (no second compile for its shape);
on CPU, glibc's allocator keeps freed memory instead of returning it to the OS every step (process-wide, so
set where our processes start, not here: process.py). On CUDA,
``train.cuda_graph`` replays the whole step from a CUDA graph for the full-size batches (graph_step.py; off
by default: not yet run on a GPU in this project).
"""

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, asdict

import torch
from torch import nn

from . import graph_step
from .data import FashionMNIST, epoch_order, num_batches, to_float
from .distributed import SINGLE, share
from ..network.model import bn_layers, gamma_beta, is_norm, moving_stats
from ..network.batchnorm import BatchNorm, channel_dims, ghost_sizes
from .step import autocast, train_step

PROGRESS_EVERY = 25


@dataclass
class EpochStats:
    epoch: int                 # 1-based
    loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float    # training steps only, as the tutorial times them
    seconds: float             # wall time of the whole epoch, evaluation included
    test_acc_precise: float | None = None   # with BN statistics re-estimated (eval.precise_bn)
    test_acc_batch_stats: float | None = None  # with each test batch's own BN statistics (eval.batch_stats)

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Diverged(Exception):
    def __init__(self, stats: EpochStats):
        super().__init__(f"training diverged at epoch {stats.epoch}: loss is {stats.loss}")
        self.stats = stats


class Interrupted(Exception):
    def __init__(self, epoch: int, batch: int):
        super().__init__(f"interrupted during epoch {epoch}, batch {batch}")
        self.epoch, self.batch = epoch, batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def uses_tf32(precision: str, device: torch.device) -> bool:
    """Whether a run's fp32 convolutions and matmuls may use TF32 tensor cores: only with train.precision = "tf32",
    and only on CUDA (recorded in meta.json as "tf32"). The CPU never uses TF32."""
    return precision == "tf32" and device.type == "cuda"


def set_fp32_math(precision: str, device: torch.device) -> bool:
    """Make "fp32" mean IEEE fp32 on a GPU: cuDNN allows TF32 for fp32 convolutions by default (Ampere and newer,
    10-bit mantissa), so without this an "fp32" run would not be one; train.precision = "tf32" allows it, on
    purpose. Sets both of PyTorch's process-wide flags on every call, so runs in one process (the benchmark) each
    get their own. Nothing is touched on CPU, where TF32 does not exist: CPU numbers stay as they were.
    Uses the allow_tf32 flags, which every supported torch has (PyTorch >= 2.9 adds ``fp32_precision``; reading an
    allow_tf32 flag after setting the new one differently is an error there, and inductor reads
    ``torch.backends.cudnn.allow_tf32``). Returns ``uses_tf32``."""
    tf32 = uses_tf32(precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return tf32


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of a (1-based) epoch, set at its start (train.lr_schedule).

    constant: lr every epoch (the tutorial's). cosine: lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2, from lr in
    the first epoch down to ~lr/40 in the tenth of ten. step: lr, then lr / 10 after half the epochs and lr / 100
    after three quarters. Per epoch, not per step, so a resumed run picks up the same rate from its epoch alone.
    """
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
    if schedule == "step":
        return lr * 0.1 ** ((epoch - 1 >= epochs / 2) + (epoch - 1 >= 3 * epochs / 4))
    return lr


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    # The tutorial's plain SGD: no momentum, no weight decay. On CUDA, the fused kernel updates all 18
    # parameters in one launch (launches dominate a GPU step). On CPU it saves a negligible share of a step
    # (results/benchmark/NOTES.md), so PyTorch's default stays there.
    cuda = next(model.parameters()).is_cuda
    if not weight_decay:  # one group, as always
        return torch.optim.SGD(model.parameters(), lr=lr, fused=True if cuda else None)
    # train.weight_decay pulls only the conv/linear weights towards 0: a bias, gamma or beta has no scale to
    # regularize (decaying gamma would shrink what BN normalized back towards 0).
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    decayed = {id(p) for p in weights}
    rest = [p for p in model.parameters() if id(p) not in decayed]
    groups = [{"params": weights, "weight_decay": weight_decay}] + ([{"params": rest, "weight_decay": 0.0}]
                                                                     if rest else [])
    return torch.optim.SGD(groups, lr=lr, fused=True if cuda else None)


@contextmanager
def batch_statistics(model: nn.Module):
    """Train mode for the norm layers (each batch's own statistics), with dropout (model.dropout) off: for
    measuring the network that is evaluated, not a random thinning of it. Restores the mode after."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             precision: str = "fp32", job=SINGLE) -> float:
    """Accuracy in eval mode (BN uses its moving statistics). Leaves the model in eval mode.
    In a data-parallel job each process evaluates every world-th batch and the correct counts are summed:
    the same batches as one process, so the same count."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for i in range(job.rank * batch_size, labels.shape[0], job.world * batch_size):
        with autocast(images.device, precision):
            logits = model(to_float(images[i:i + batch_size]))
        correct += (logits.argmax(dim=1) == labels[i:i + batch_size]).sum()
    return job.sum_count(correct.item()) / labels.shape[0]  # the one host sync


class GradNorms:
    """log.grad_norms: for every conv/linear weight and every trained gamma and beta, the mean over an epoch's
    steps of its gradient's L2 norm. The norms of a step are added into one tensor on the device; ``row``
    reads it once per epoch. Names are module name + role, the same for every norm kind: ``conv1.conv.weight``,
    ``conv1.bn.gamma``, ``conv1.bn.beta`` (nn.BatchNorm's and GroupNorm's weight/bias are called gamma/beta
    here too), ``fc3.weight``. A gamma or beta fixed by bn.scale/bn.center has no gradient and is left out."""

    def __init__(self, model: nn.Module):
        self.names, self.params = [], []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self.names.append(f"{name}.weight")
                self.params.append(module.weight)
            elif is_norm(module):
                for label, t in zip(("gamma", "beta"), gamma_beta(module)):
                    if isinstance(t, nn.Parameter):
                        self.names.append(f"{name}.{label}")
                        self.params.append(t)
        self.sums = torch.zeros(len(self.params), device=self.params[0].device)
        self.steps = 0

    def start_epoch(self) -> None:
        self.sums.zero_()
        self.steps = 0

    @torch.no_grad()
    def add(self) -> None:
        self.sums += torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in self.params])
        self.steps += 1

    def row(self, epoch: int) -> dict:
        """{"epoch": epoch, name: mean norm, ...} for the epoch so far (one host sync)."""
        return {"epoch": epoch, **dict(zip(self.names, (self.sums / max(self.steps, 1)).tolist()))}


@torch.no_grad()
def batch_stats_test_acc(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                         precision: str = "fp32", job=SINGLE) -> float:
    """eval.batch_stats: test accuracy with every test batch normalized by its own statistics, as BN does in
    training. ``batch_size`` should be train.batch_size, the batch size BN saw in training (a layer with
    bn.ghost_batch splits each batch into its ghost groups, as in training); a last batch of one example joins
    the one before. Every buffer (moving statistics, num_batches_tracked) is saved before and put back after,
    so neither training nor the usual eval-mode test accuracy is affected. No gradient. In a data-parallel job
    each process takes its slice of every test batch, as in training (synced or local BN alike)."""
    buffers = list(model.buffers())
    saved = [b.clone() for b in buffers]
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    try:
        with batch_statistics(model):  # BN with batch statistics, dropout (if any) off
            start = 0
            for size in ghost_sizes(labels.shape[0], batch_size):
                lo, hi = share(size, job.rank, job.world)
                with autocast(images.device, precision):
                    logits = model(to_float(images[start + lo:start + hi]))
                correct += (logits.argmax(dim=1) == labels[start + lo:start + hi]).sum()
                start += size
    finally:
        for b, s in zip(buffers, saved):
            b.copy_(s)
    return job.sum_count(correct.item()) / labels.shape[0]  # the one host sync


@torch.no_grad()
def reestimate_bn(model: nn.Module, images: torch.Tensor, batch_size: int, max_batches: int = 0,
                  job=SINGLE) -> None:
    """Precise BN: replace every BN layer's moving statistics by the average of per-batch statistics over
    training batches, with the weights fixed (as torch.optim.swa_utils.update_bn, but for the scratch
    layer too). Each layer keeps its own variance convention (biased or unbiased). A layer with bn.ghost_batch
    takes each batch's statistics as its moving update does: the mean over the ghost groups of theirs.

    In a data-parallel job the batch statistics are those training used. Synced BN: each process runs every
    world-th batch whole (``model`` must not sync: use ``local_model``), the per-batch statistics are summed
    over the processes (a batch another process ran adds zeros here) and then added up in batch order: the
    same additions in the same order as one process, so the same numbers. Local BN: each process runs its
    slice of every batch, as in training, and a batch's statistics are the mean over the slices' (as
    bn.ghost_batch in one process)."""
    per_batch, hooks = {}, []  # name -> [means (batches, C), variances (batches, C)]
    batches = num_batches(images.shape[0], batch_size, max_batches)
    slices = job.distributed and not job.sync
    current = [0]

    def hook_for(name, layer):
        unbiased = layer.unbiased if isinstance(layer, BatchNorm) else True  # nn.BatchNorm stores unbiased
        ghost = layer.ghost_batch if isinstance(layer, BatchNorm) else 0

        def hook(_module, inputs):
            x = inputs[0].float()
            if ghost:
                groups = [torch.var_mean(part, dim=channel_dims(x.ndim), correction=1 if unbiased else 0)
                          for part in x.split(ghost_sizes(x.shape[0], ghost))]
                var, mean = (torch.stack(t).mean(0) for t in zip(*groups))
            else:
                var, mean = torch.var_mean(x, dim=channel_dims(x.ndim), correction=1 if unbiased else 0)
            s = per_batch.setdefault(name, [mean.new_zeros(batches, mean.shape[0]),
                                            var.new_zeros(batches, var.shape[0])])
            s[0][current[0]] = mean
            s[1][current[0]] = var
        return hook

    layers = bn_layers(model)
    if not layers:  # nothing to re-estimate: skip the pass over the training set
        return
    for name, layer in layers.items():
        hooks.append(layer.register_forward_pre_hook(hook_for(name, layer)))
    try:
        # Batch statistics flow forward as in training; the weights are not touched. Dropout is off: these are
        # the statistics of the network as it is evaluated.
        with batch_statistics(model):
            for i in range(batches) if slices else range(job.rank, batches, job.world):
                current[0] = i
                batch = images[i * batch_size:(i + 1) * batch_size]
                if slices:
                    start, stop = share(batch.shape[0], job.rank, job.world)
                    batch = batch[start:stop]
                model(to_float(batch))
    finally:
        for h in hooks:
            h.remove()
    for name, layer in layers.items():
        moving = moving_stats(layer)
        # A process that ran no batch (fewer batches than processes) still joins the sums, with zeros.
        stats = per_batch.get(name) or [m.new_zeros(batches, m.shape[0], dtype=torch.float32) for m in moving]
        for per_batch_stat, moving_stat in zip(stats, moving):
            job.sum_(per_batch_stat)
            if slices:
                per_batch_stat /= job.world  # the mean over the slices of each batch
            total = torch.zeros_like(per_batch_stat[0])
            for row in per_batch_stat:  # in batch order, one batch at a time, as the sums always were
                total += row
            moving_stat.copy_(total / batches)


def local_model(model: nn.Module, job=SINGLE) -> nn.Module:
    """``model`` itself in one process; in a data-parallel job a copy whose BN layers are not synced, for
    work each process does on whole batches of its own (precise BN)."""
    if not job.distributed:
        return model
    from ..network.sync_batchnorm import local_copy
    return local_copy(model)


def precise_test_acc(model, data: FashionMNIST, batch_size: int, max_batches: int, eval_batch_size: int,
                     job=SINGLE) -> float:
    """Test accuracy with re-estimated BN statistics; the model's own moving statistics are restored after."""
    if job.distributed:  # on a copy without synced BN: each process normalizes its batches whole
        model = local_model(model, job)
        reestimate_bn(model, data.train_images, batch_size, max_batches, job)
        return evaluate(model, data.test_images, data.test_labels, eval_batch_size, job=job)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        reestimate_bn(model, data.train_images, batch_size, max_batches)
        return evaluate(model, data.test_images, data.test_labels, eval_batch_size)
    finally:
        model.load_state_dict(saved)


def fit(model: nn.Module, data: FashionMNIST, cfg, optimizer=None, start_epoch: int = 0, on_epoch=None,
        progress: bool = False, should_stop=lambda: False, grad_norms=None, job=SINGLE, landscape=None,
        curve=None) -> list:
    """Train ``model`` on ``data`` (already on the model's device) for epochs start_epoch+1 .. cfg.train.epochs.

    ``on_epoch(stats)`` runs after each finished epoch (the run directory saves there). A non-finite loss
    raises Diverged before on_epoch; ``should_stop()`` true at a batch boundary raises Interrupted.
    ``grad_norms`` (a GradNorms, for log.grad_norms) is restarted each epoch and fed every step; on_epoch
    reads its row. In a data-parallel job (``job``, distributed.py) the epoch's figures are those of the whole
    job (gradient norms are of the averaged, global-batch gradients); ``make_step`` says how each batch trains.
    ``landscape`` (a landscape.Landscape, log.landscape) measures before the steps it says are due; ``curve``
    (a curve.Curve, log.eval_every) records the test accuracy within the epoch. Both add rows to their ``rows``;
    their time is not counted in examples/sec.
    """
    t, device = cfg.train, data.train_labels.device
    optimizer = optimizer or make_optimizer(model, t.lr, t.weight_decay)
    set_fp32_math(t.precision, device)
    history = []
    if start_epoch >= t.epochs:
        return history
    batches = num_batches(data.train_labels.shape[0], t.batch_size, t.limit_batches)
    # Summed loss and correct count of the epoch, zeroed in place at each epoch start (a CUDA graph adds
    # into them at fixed addresses).
    sums = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    started = time.perf_counter()  # the first epoch's seconds include making the step (a CUDA graph's capture)
    model.train()  # a captured step records train mode
    step = make_step(model, optimizer, data, cfg, job, grad_norms, *sums)
    stop_pending = [False]  # a stop asked between two of the job's agreements (Job.stop_agreed)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        bar = _progress_bar(progress, batches, epoch, t.epochs)
        seen, step_seconds = train_epoch(step, epoch, batches, model, optimizer, data, cfg, sums, bar,
                                         lambda b: job.stop_agreed(should_stop(), b, stop_pending), grad_norms,
                                         landscape, curve)
        loss_total, correct_total, seen, step_seconds = job.epoch_totals(sums[0].item(), sums[1].item(), seen,
                                                                         step_seconds)
        loss, train_acc = loss_total / seen, correct_total / seen
        if not job.sync:
            job.average_moving_stats(model)  # local BN in a data-parallel job (no-op in one process)
        stats = EpochStats(epoch, loss, train_acc, float("nan"), seen / step_seconds, 0.0)
        if math.isfinite(loss):
            evaluate_epoch(stats, model, data, cfg, job, batches, sums, seen, curve)
        stats.seconds = time.perf_counter() - started
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{train_acc:.3f}", test=f"{stats.test_acc:.3f}")
            bar.close()
        if not math.isfinite(loss):
            raise Diverged(stats)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        started = time.perf_counter()
    return history


def make_step(model: nn.Module, optimizer, data: FashionMNIST, cfg, job, grad_norms, loss_sum: torch.Tensor,
              correct: torch.Tensor):
    """The step fit() runs for every batch, chosen once: ``step(idx)`` trains on the examples ``idx`` of the
    training set, adds the summed loss and correct count into ``loss_sum`` and ``correct`` (on the device) and
    returns how many examples this process trained on. In a data-parallel job, this process's slice of every
    batch through DDP; else every full-size batch through the compiled model (train.compile) or the captured
    CUDA graph (train.cuda_graph), and the last partial batch eagerly: the same parameters, without a second
    compile or capture for its shape."""
    t, images, labels = cfg.train, data.train_images, data.train_labels

    def eager(module, idx, weight=1.0) -> int:
        batch_loss, batch_correct = train_step(module, optimizer, to_float(images[idx]), labels[idx], t.precision,
                                               grad_norms, weight)
        loss_sum.add_(batch_loss)
        correct.add_(batch_correct)
        return idx.shape[0]

    if job.distributed:
        parallel = job.wrap(model)  # DDP
        return lambda idx: eager(parallel, *job.slice(idx))
    # (A new compiled wrapper per fit() call costs nothing: dynamo's cache is keyed by the code and guards, so
    # the same model structure compiles once.)
    full_size = torch.compile(model) if t.compile else model
    full_step = lambda idx: eager(full_size, idx)  # noqa: E731
    if graph_step.wanted(t, labels.device) and labels.shape[0] >= t.batch_size:
        # Warm-up and capture happen here, once per fit(); the warm-up steps add into the sums, which each
        # epoch zeroes at its start.
        static_step = graph_step.make_static_step(model, full_size, optimizer, images, labels, t.batch_size,
                                                  t.precision, loss_sum, correct)
        full_step = lambda idx: static_step(idx) or idx.shape[0]  # noqa: E731  (static_step returns None)
    return lambda idx: full_step(idx) if idx.shape[0] == t.batch_size else eager(model, idx)


def train_epoch(step, epoch: int, batches: int, model, optimizer, data: FashionMNIST, cfg, sums: tuple, bar,
                stop_agreed, grad_norms=None, landscape=None, curve=None) -> tuple:
    """One epoch's batches through ``step`` in train mode, at the epoch's learning rate, in its seeded order;
    the measurements of log.landscape and log.eval_every between the steps. Returns (examples this process trained on, seconds of the steps:
    the measurements' time left out)."""
    t, device, n = cfg.train, data.train_labels.device, data.train_labels.shape[0]
    loss_sum, correct = sums
    model.train()
    if t.lr_schedule != "constant":  # (refused with train.cuda_graph: a captured step keeps its lr)
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(t.lr, t.lr_schedule, epoch, t.epochs)
    order = epoch_order(n, t.seed, epoch, device)
    loss_sum.zero_()
    correct.zero_()
    if grad_norms is not None:
        grad_norms.start_epoch()
    if curve is not None:
        curve.start_epoch(batches, min(n, batches * t.batch_size))
    seen, paused = 0, 0.0  # paused: seconds of measurements between steps, not counted as step time
    sync(device)
    step_start = time.perf_counter()
    for b in range(batches):
        if stop_agreed(b):
            raise Interrupted(epoch, b)
        idx = order[b * t.batch_size:(b + 1) * t.batch_size]
        if landscape is not None and landscape.due((epoch - 1) * batches + b + 1):
            paused += _timed(device, landscape.measure, model, optimizer, to_float(data.train_images[idx]),
                             data.train_labels[idx], (epoch - 1) * batches + b + 1, epoch, t.precision)
        seen += step(idx)
        if curve is not None and curve.due(b + 1):
            paused += _timed(device, curve.record, model, data, cfg, epoch, b + 1, loss_sum, correct, seen)
        if bar is not None:
            bar.update(1)
            if (b + 1) % PROGRESS_EVERY == 0:  # a host sync, only when someone watches the bar
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    sync(device)
    return seen, time.perf_counter() - step_start - paused


def evaluate_epoch(stats: EpochStats, model, data: FashionMNIST, cfg, job, batches: int, sums: tuple, seen: int,
                   curve=None) -> None:
    """Fill in ``stats``'s test accuracies after a finite epoch: eval mode, and with eval.precise_bn and
    eval.batch_stats those too; then log.eval_every's row for the epoch's end, from the figures just measured."""
    t, ev = cfg.train, cfg.eval
    stats.test_acc = evaluate(model, data.test_images, data.test_labels, ev.batch_size, t.precision, job)
    if ev.precise_bn and (ev.precise_bn_epochs == "all" or stats.epoch == t.epochs):
        stats.test_acc_precise = precise_test_acc(model, data, t.batch_size, ev.precise_bn_batches, ev.batch_size,
                                                  job)
    if ev.batch_stats:
        stats.test_acc_batch_stats = batch_stats_test_acc(model, data.test_images, data.test_labels, t.batch_size,
                                                          t.precision, job)
    if curve is not None:
        curve.record(model, data, cfg, stats.epoch, batches, *sums, seen, stats.test_acc,
                     stats.test_acc_batch_stats)


def _timed(device: torch.device, work, *args) -> float:
    """Run ``work(*args)`` and return its seconds, the device's queue emptied before and after (only the
    measurements of log.landscape and log.eval_every pay these syncs)."""
    sync(device)
    start = time.perf_counter()
    work(*args)
    sync(device)
    return time.perf_counter() - start


def _progress_bar(enabled: bool, total: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # the notebook's widget bar in Jupyter, the text bar elsewhere
    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True, dynamic_ncols=True)
