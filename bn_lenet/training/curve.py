"""log.eval_every: the learning curve at a finer grain than the epoch, for time-to-accuracy; ``curve.jsonl``.

At every ``log.eval_every`` of an epoch's steps (rounded to the nearest step) and at the epoch's end, one row:

    step                  training steps so far in the run
    epoch                 epochs so far, as a fraction (0.25, 0.5, ...)
    examples              training examples seen so far in the run
    train_loss, train_acc the mean over the steps since the row before (in this epoch), in train mode
    test_acc              eval mode, the moving statistics (what metrics.jsonl's test_acc is)
    test_acc_batch_stats  each test batch normalized with its own statistics (batches of train.batch_size), for a
                          network with BN layers: the steady figure. In the test_stats study it swung from epoch
                          to epoch as little as precise BN did (0.0159 vs 0.0160 at lr 1, where the moving
                          statistics swing 0.0570) for the cost of one pass over the test set, where precise BN
                          costs a pass over the training set at every row.

The epoch's last row reuses the epoch's own test accuracy (and eval.batch_stats's, when on). Evaluating changes
nothing in training (no weight, statistic or RNG draw is touched) and its time is not counted in the epoch's
examples/sec. Each row reads the loss and correct count from the device: one host sync per row.
"""

import math

from ..network.model import bn_layers
from .train import batch_stats_test_acc, evaluate


def eval_steps(every: float, batches: int) -> list:
    """The steps of an epoch (1-based) after which a row is written: round(k * every * batches) for k = 1, 2, ...
    while k * every <= 1, and the epoch's last step."""
    rows = math.floor(1 / every + 1e-9)
    if rows >= batches:
        return list(range(1, batches + 1))
    return sorted({min(batches, max(1, round(k * every * batches))) for k in range(1, rows + 1)} | {batches})


class Curve:
    """The rows of curve.jsonl. fit() calls ``start_epoch``, asks ``due(step)`` after each step of the epoch
    (the last one excepted) and calls ``record``, and ``record`` once more after the epoch's evaluation."""

    file = "curve.jsonl"

    def __init__(self, every: float):
        self.every = every
        self.rows = []

    def start_epoch(self, batches: int, epoch_examples: int) -> None:
        self.steps, self.batches, self.epoch_examples = set(eval_steps(self.every, batches)), batches, epoch_examples
        self.before = (0.0, 0, 0)  # loss sum, correct count, examples at the row before, in this epoch

    def due(self, step: int) -> bool:
        return step in self.steps and step != self.batches  # the epoch's end: after its evaluation

    def record(self, model, data, cfg, epoch: int, step: int, loss_sum, correct, seen: int, test_acc=None,
               batch_stats=None) -> None:
        """A row after ``step`` of ``epoch``; ``test_acc`` / ``batch_stats`` when already measured."""
        loss_total, correct_total = loss_sum.item(), correct.item()  # the row's host sync
        loss0, correct0, seen0 = self.before
        self.before = (loss_total, correct_total, seen)
        was_training = model.training
        if test_acc is None:
            test_acc = evaluate(model, data.test_images, data.test_labels, cfg.eval.batch_size, cfg.train.precision)
        if batch_stats is None and bn_layers(model):
            batch_stats = batch_stats_test_acc(model, data.test_images, data.test_labels, cfg.train.batch_size,
                                               cfg.train.precision)
        model.train(was_training)
        n = max(seen - seen0, 1)
        row = {"step": (epoch - 1) * self.batches + step, "epoch": round(epoch - 1 + step / self.batches, 6),
               "examples": (epoch - 1) * self.epoch_examples + seen, "train_loss": (loss_total - loss0) / n,
               "train_acc": (correct_total - correct0) / n, "test_acc": test_acc}
        if batch_stats is not None:
            row["test_acc_batch_stats"] = batch_stats
        self.rows.append({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()})
