"""The scratch BatchNorm and nn.BatchNorm are the same layer under PyTorch's conventions, and under the
tutorial's they differ only where documented (README: "The scratch BatchNorm, and how it differs"); precise BN
computes what it claims for both.

Extends tests/test_batchnorm.py (one training step's forward and gradients, 20 steps of moving statistics)
to eval-mode gradients, long runs of varying batch size, every momentum, whole LeNets and precise BN.
"""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from bn_lenet.network.batchnorm import BatchNorm
from bn_lenet.training.data import epoch_order, to_float
from bn_lenet.network.model import bn_layers, copy_weights, lenet, moving_stats
from bn_lenet.training.train import evaluate, make_optimizer, precise_test_acc, reestimate_bn, train_step

PYTORCH_CONVENTIONS = {"momentum": 0.9, "unbiased": True}   # scratch momentum 0.9 == nn.BatchNorm momentum 0.1
TIGHT = {"rtol": 1e-12, "atol": 1e-12}                      # float64: only rounding may differ
CHANNELS = {2: 5, 4: 3}


def bn_pair(num_dims, torch_momentum=0.1, **scratch_options):
    """A scratch and a built-in BN layer in float64 with the same non-trivial gamma and beta."""
    c = CHANNELS[num_dims]
    ours = BatchNorm(c, num_dims, **scratch_options).double()
    theirs = (nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d)(c, momentum=torch_momentum).double()
    with torch.no_grad():
        g, b = torch.rand(c, dtype=torch.double) + 0.5, torch.randn(c, dtype=torch.double)
        ours.gamma.copy_(g), ours.beta.copy_(b), theirs.weight.copy_(g), theirs.bias.copy_(b)
    return ours, theirs


def batch(num_dims, n, step=0):
    """A batch whose distribution drifts with the step, so the moving statistics keep changing."""
    shape = (n, CHANNELS[num_dims]) if num_dims == 2 else (n, CHANNELS[num_dims], 4, 5)
    return torch.randn(shape, dtype=torch.double) * (1 + 0.05 * step) + 0.1 * step


def train_both(ours, theirs, num_dims, steps, sizes=(2, 3, 17, 64, 96)):
    for step in range(steps):
        x = batch(num_dims, sizes[step % len(sizes)], step)
        ours(x), theirs(x)


# --- PyTorch's conventions: the same layer --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("num_dims", [2, 4])
def test_moving_statistics_match_after_many_steps_of_varying_batch_size(num_dims):
    ours, theirs = bn_pair(num_dims, **PYTORCH_CONVENTIONS)
    train_both(ours, theirs, num_dims, steps=300)
    torch.testing.assert_close(ours.moving_mean, theirs.running_mean, **TIGHT)
    torch.testing.assert_close(ours.moving_var, theirs.running_var, **TIGHT)


@pytest.mark.parametrize("num_dims", [2, 4])
def test_eval_forward_and_all_gradients_match_and_grad_mode_does_not_switch_to_batch_statistics(num_dims):
    ours, theirs = bn_pair(num_dims, **PYTORCH_CONVENTIONS)
    train_both(ours, theirs, num_dims, steps=30)
    ours.eval(), theirs.eval()
    x = batch(num_dims, 7, step=40)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)  # grad enabled, eval mode: both use the moving statistics
    torch.testing.assert_close(y1, y2, **TIGHT)
    upstream = torch.randn_like(y1)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TIGHT)
    torch.testing.assert_close(ours.gamma.grad, theirs.weight.grad, **TIGHT)
    torch.testing.assert_close(ours.beta.grad, theirs.bias.grad, **TIGHT)
    ours.train(), theirs.train()
    with torch.no_grad():  # no_grad in train mode: both still use (and update) the batch statistics
        torch.testing.assert_close(ours(x), theirs(x), **TIGHT)
    torch.testing.assert_close(ours.moving_mean, theirs.running_mean, **TIGHT)


@pytest.mark.parametrize("scratch_momentum", [0.0, 0.5, 0.99])
def test_scratch_momentum_m_is_nn_batchnorm_momentum_one_minus_m(scratch_momentum):
    ours, theirs = bn_pair(4, torch_momentum=1 - scratch_momentum, momentum=scratch_momentum, unbiased=True)
    train_both(ours, theirs, 4, steps=25)
    torch.testing.assert_close(ours.moving_mean, theirs.running_mean, **TIGHT)
    torch.testing.assert_close(ours.moving_var, theirs.running_var, **TIGHT)


@pytest.mark.slow
def test_lenets_take_identical_sgd_steps_and_agree_in_eval():
    torch.manual_seed(1)
    ours, theirs = lenet("scratch", **PYTORCH_CONVENTIONS).double(), lenet("torch").double()
    copy_weights(ours, theirs)
    opt_ours, opt_theirs = make_optimizer(ours, 1.0), make_optimizer(theirs, 1.0)  # the tutorial's lr 1.0
    for step in range(4):
        x, y = torch.rand(16 + step, 1, 28, 28, dtype=torch.double), torch.randint(0, 10, (16 + step,))
        loss_ours, _ = train_step(ours, opt_ours, x, y)
        loss_theirs, _ = train_step(theirs, opt_theirs, x, y)
        torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):  # same order
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")
    for a, b in zip(bn_layers(ours).values(), bn_layers(theirs).values()):
        for x, y in zip(moving_stats(a), moving_stats(b)):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    ours.eval(), theirs.eval()
    x = torch.rand(8, 1, 28, 28, dtype=torch.double)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-9, atol=1e-9)


def first_epoch_losses(net, data, batches, batch_size=256):
    """Per-batch training loss of the first epoch on real data, in float32 as the runs train."""
    optimizer, order, losses = make_optimizer(net, 1.0), epoch_order(60000, 0, 1, "cpu"), []
    net.train()
    for b in range(batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        loss_sum, _ = train_step(net, optimizer, to_float(data.train_images[idx]), data.train_labels[idx])
        losses.append(loss_sum.item() / idx.shape[0])
    return losses


@pytest.mark.slow
def test_first_epoch_loss_curve_and_test_accuracy_match_on_real_data(fashion_mnist):
    torch.manual_seed(0)
    ours, theirs = lenet("scratch", **PYTORCH_CONVENTIONS), lenet("torch")
    copy_weights(ours, theirs)
    a, b = first_epoch_losses(ours, fashion_mnist, 40), first_epoch_losses(theirs, fashion_mnist, 40)
    assert a[-1] < 0.75 * a[0]  # it does learn
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-4)
    test = fashion_mnist.test_images[:2000], fashion_mnist.test_labels[:2000]
    assert abs(evaluate(ours, *test) - evaluate(theirs, *test)) <= 0.002  # at most 4 of 2000 flip


# --- the tutorial's conventions: differences exactly as documented (README) --------------------------------

def test_default_momenta_count_from_opposite_ends_and_are_the_same_average():
    ours, theirs = bn_pair(2)  # defaults: ours 0.9 (weight on the old value), nn.BatchNorm 0.1 (on the new)
    assert (ours.momentum, theirs.momentum, ours.eps, theirs.eps) == (0.9, 0.1, 1e-5, 1e-5)
    train_both(ours, theirs, 2, steps=50)
    torch.testing.assert_close(ours.moving_mean, theirs.running_mean, **TIGHT)
    same_number, _ = bn_pair(2, momentum=0.1)  # the same number means the opposite weighting
    x = batch(2, 8)
    same_number(x)
    torch.testing.assert_close(same_number.moving_mean, 0.9 * x.mean(0), **TIGHT)


@pytest.mark.parametrize("num_dims", [2, 4])
def test_at_tutorial_defaults_the_only_eval_difference_is_the_stored_variance(num_dims):
    ours, theirs = bn_pair(num_dims)
    train_both(ours, theirs, num_dims, steps=40)
    torch.testing.assert_close(ours.moving_mean, theirs.running_mean, **TIGHT)
    assert not torch.allclose(ours.moving_var, theirs.running_var, rtol=1e-6, atol=0)  # biased vs unbiased
    ours.eval(), theirs.eval()
    x = batch(num_dims, 9, step=45)
    assert not torch.allclose(ours(x), theirs(x), rtol=1e-6, atol=0)
    with torch.no_grad():
        ours.moving_var.copy_(theirs.running_var)  # hand ours the unbiased variance: nothing else differs
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


def test_state_names_differ_one_to_one_and_only_nn_batchnorm_counts_batches():
    ours, theirs = bn_pair(4)
    assert list(ours.state_dict()) == ["gamma", "beta", "moving_mean", "moving_var"]
    assert list(theirs.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def test_options_exist_only_in_nn_batchnorm():
    nn.BatchNorm1d(5, affine=False, track_running_stats=False, momentum=None)  # all accepted there
    for option in ({"affine": False}, {"track_running_stats": False}):
        with pytest.raises(TypeError):
            BatchNorm(5, 2, **option)


@pytest.mark.parametrize("num_dims", [2, 4])
def test_one_value_per_channel_fails_in_training_for_both_and_works_in_eval(num_dims):
    ours, theirs = bn_pair(num_dims)
    x = torch.randn((1, CHANNELS[num_dims]) if num_dims == 2 else (1, CHANNELS[num_dims], 1, 1), dtype=torch.double)
    for layer in (ours, theirs):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            layer(x)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)  # fresh moving statistics: mean 0, var 1 in both


# --- precise BN ---------------------------------------------------------------------------------------

def trained_pair(**scratch_options):
    """A scratch and a built-in LeNet with the same weights, after a few steps (non-trivial statistics)."""
    torch.manual_seed(2)
    ours, theirs = lenet("scratch", **scratch_options), lenet("torch")
    opt = make_optimizer(ours, 1.0)
    for _ in range(3):
        train_step(ours, opt, torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    copy_weights(ours, theirs)
    return ours, theirs


def random_images(n):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))


@pytest.mark.slow
def test_precise_bn_equals_torch_update_bn_for_both_kinds():
    """update_bn (a cumulative average over batches, unbiased variance) is the reference for nn.BatchNorm;
    our scratch layer with unbiased=True must land on the same statistics."""
    ours, theirs = trained_pair(**PYTORCH_CONVENTIONS)
    reference = lenet("torch")
    reference.load_state_dict(theirs.state_dict())
    images = random_images(600)  # batches of 256, 256 and 88: each batch weighs the same, as in update_bn
    update_bn([to_float(images[i:i + 256]) for i in range(0, 600, 256)], reference)
    for net in (ours, theirs):
        before = {k: v.clone() for k, v in net.named_parameters()}
        reestimate_bn(net, images, batch_size=256)
        for (name, layer), ref in zip(bn_layers(net).items(), bn_layers(reference).values()):
            for got, want in zip(moving_stats(layer), moving_stats(ref)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
        assert all(torch.equal(p, before[k]) for k, p in net.named_parameters())  # weights untouched
        assert net.training  # mode restored


@pytest.mark.slow
def test_precise_bn_keeps_the_biased_convention_of_the_tutorial_layer():
    ours, theirs = trained_pair()  # tutorial defaults: biased variance
    images = random_images(512)    # two equal batches of 256
    reestimate_bn(ours, images, batch_size=256)
    reestimate_bn(theirs, images, batch_size=256)
    per_channel = {"conv1.bn": 256 * 24 * 24, "conv2.bn": 256 * 8 * 8, "fc1.bn": 256, "fc2.bn": 256}
    for name, n in per_channel.items():
        mean_ours, var_ours = moving_stats(bn_layers(ours)[name])
        mean_theirs, var_theirs = moving_stats(bn_layers(theirs)[name])
        torch.testing.assert_close(mean_ours, mean_theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var_ours, var_theirs * (n - 1) / n, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_precise_test_acc_leaves_the_model_as_it_was(fashion_mnist):
    ours, _ = trained_pair()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    acc = precise_test_acc(ours, fashion_mnist, batch_size=256, max_batches=4, eval_batch_size=1000)
    assert 0.0 <= acc <= 1.0
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())
