"""train.lr_schedule: the learning rate each epoch trains with, and the refusals."""

import math

import pytest

from bn_lenet.training import config
from bn_lenet.errors import ConfigError
from bn_lenet.training.train import epoch_lr, fit
from bn_lenet.network.model import from_config


def test_constant_is_the_tutorials_lr_every_epoch():
    assert [epoch_lr(1.0, "constant", e, 10) for e in range(1, 11)] == [1.0] * 10


def test_cosine_starts_at_lr_and_falls_by_half_a_cosine_over_the_epochs():
    lrs = [epoch_lr(2.0, "cosine", e, 10) for e in range(1, 11)]
    assert lrs[0] == 2.0
    assert lrs[5] == pytest.approx(1.0)                              # epoch 6 of 10: half way down
    assert lrs[-1] == pytest.approx(2.0 * (1 + math.cos(0.9 * math.pi)) / 2)  # ~0.049: never 0
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_step_divides_by_ten_after_half_and_after_three_quarters_of_the_epochs():
    assert [epoch_lr(1.0, "step", e, 8) for e in range(1, 9)] == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.slow
def test_fit_trains_each_epoch_with_the_scheduled_lr(fashion_mnist):
    cfg = config.resolve(None, ["train.lr_schedule=cosine", "train.epochs=3", "train.limit_batches=2",
                                "train.device=cpu"])
    model = from_config(cfg)
    seen = []
    import torch
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    fit(model, fashion_mnist, cfg, optimizer, on_epoch=lambda s: seen.append(optimizer.param_groups[0]["lr"]))
    assert seen == [epoch_lr(1.0, "cosine", e, 3) for e in (1, 2, 3)]


@pytest.mark.parametrize("overrides, fragment", [
    (["train.lr_schedule=linear"], 'train.lr_schedule = \'linear\' is out of range: it must be "constant", "cosine"'),
    (["train.lr_schedule=cosine", "train.cuda_graph=true"], "cannot be used with train.cuda_graph = true"),
])
def test_a_bad_schedule_is_refused_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match="train.lr_schedule") as e:
        config.resolve(None, overrides)
    assert fragment in str(e.value)
