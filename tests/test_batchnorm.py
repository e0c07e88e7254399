"""The scratch BatchNorm against nn.BatchNorm, and each convention difference the docstring claims."""

import pytest
import torch
from torch import nn

from bn_lenet.network.batchnorm import BatchNorm, batch_norm

SHAPES = {2: (32, 5), 4: (16, 3, 6, 6)}


def pair(num_dims, **scratch_options):
    c = SHAPES[num_dims][1]
    ours = BatchNorm(c, num_dims, **scratch_options).double()
    theirs = (nn.BatchNorm2d(c) if num_dims == 4 else nn.BatchNorm1d(c)).double()
    with torch.no_grad():  # non-trivial gamma/beta, the same in both
        g, b = torch.rand(c, dtype=torch.double) + 0.5, torch.randn(c, dtype=torch.double)
        ours.gamma.copy_(g), ours.beta.copy_(b), theirs.weight.copy_(g), theirs.bias.copy_(b)
    return ours, theirs


@pytest.mark.parametrize("num_dims", [2, 4])
def test_training_forward_and_all_gradients_match_nn_batchnorm(num_dims):
    ours, theirs = pair(num_dims)
    x = torch.randn(SHAPES[num_dims], dtype=torch.double) * 3 + 1
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    torch.testing.assert_close(y1, y2)
    upstream = torch.randn_like(y1)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.gamma.grad, theirs.weight.grad)
    torch.testing.assert_close(ours.beta.grad, theirs.bias.grad)


@pytest.mark.parametrize("num_dims", [2, 4])
def test_with_pytorch_conventions_moving_stats_and_eval_match_after_many_steps(num_dims):
    # nn.BatchNorm's momentum=0.1 weights the NEW batch; ours weights the OLD value: 0.9 here == 0.1 there.
    ours, theirs = pair(num_dims, momentum=0.9, unbiased=True)
    for _ in range(20):
        x = torch.randn(SHAPES[num_dims], dtype=torch.double) * 2 + 0.5
        ours(x), theirs(x)
    torch.testing.assert_close(ours.moving_mean, theirs.running_mean)
    torch.testing.assert_close(ours.moving_var, theirs.running_var)
    ours.eval(), theirs.eval()
    x = torch.randn(SHAPES[num_dims], dtype=torch.double)
    torch.testing.assert_close(ours(x), theirs(x))


def test_tutorial_convention_stores_biased_variance_where_nn_batchnorm_stores_unbiased():
    ours, theirs = pair(2)  # defaults: the tutorial's (biased)
    x = torch.randn(8, 5, dtype=torch.double)
    ours(x), theirs(x)
    biased, unbiased = x.var(0, unbiased=False), x.var(0, unbiased=True)
    torch.testing.assert_close(ours.moving_var, 0.9 * torch.ones(5, dtype=torch.double) + 0.1 * biased)
    torch.testing.assert_close(theirs.running_var, 0.9 * torch.ones(5, dtype=torch.double) + 0.1 * unbiased)
    assert not torch.allclose(ours.moving_var, theirs.running_var)


def test_momentum_weights_the_old_value_as_in_the_tutorial():
    bn = BatchNorm(5, 2, momentum=0.75)
    x = torch.randn(10, 5)
    bn(x)
    torch.testing.assert_close(bn.moving_mean, 0.25 * x.mean(0))  # 0.75 * 0 + 0.25 * batch mean


def test_eval_mode_follows_module_training_not_grad_mode():
    bn = BatchNorm(5, 2)
    bn.train()(torch.randn(64, 5) * 4 + 3)  # move the moving statistics away from (0, 1)
    bn.eval()
    before = bn.moving_mean.clone()
    x = torch.randn(64, 5)
    y = bn(x)  # grad enabled: the tutorial's layer would use (and update) batch statistics here
    expected = (x - bn.moving_mean) / torch.sqrt(bn.moving_var + bn.eps) * bn.gamma + bn.beta
    torch.testing.assert_close(y, expected)
    assert torch.equal(bn.moving_mean, before)
    with torch.no_grad():  # ...and in train mode, no_grad does not switch to eval either
        bn.train()
        y = bn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(5), atol=1e-5, rtol=0)


def test_moving_statistics_are_buffers_updated_in_place():
    bn = BatchNorm(6, 4)
    assert {"moving_mean", "moving_var"} <= set(bn.state_dict())
    ptr = bn.moving_mean.data_ptr()
    bn(torch.randn(4, 6, 5, 5))
    assert bn.moving_mean.data_ptr() == ptr  # same storage: safe for CUDA graph replays
    assert bn.double().moving_var.dtype == torch.float64  # follows .to()/.double() as buffers do


def test_state_dict_round_trip_keeps_moving_statistics():
    a, b = BatchNorm(6, 4), BatchNorm(6, 4)
    a(torch.randn(8, 6, 3, 3) + 2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.moving_mean, b.moving_mean) and torch.equal(a.moving_var, b.moving_var)


def test_single_value_per_channel_in_training_is_an_error_not_zeros():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(5, 2)(torch.randn(1, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(3, 4)(torch.randn(1, 3, 1, 1))
    BatchNorm(3, 4)(torch.randn(1, 3, 2, 2))  # 4 values per channel: fine
    bn = BatchNorm(5, 2).eval()
    assert bn(torch.randn(1, 5)).shape == (1, 5)  # one example at inference: fine


def test_wrong_rank_or_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\) input with C=6"):
        BatchNorm(6, 4)(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"C=6, got shape \(4, 5, 3, 3\)"):
        BatchNorm(6, 4)(torch.randn(4, 5, 3, 3))
    with pytest.raises(ValueError, match="num_dims must be 2"):
        BatchNorm(6, 3)


def test_functional_form_matches_the_module():
    bn = BatchNorm(4, 2)
    x = torch.randn(10, 4)
    mm, mv = torch.zeros(4), torch.ones(4)
    y = batch_norm(x, bn.gamma, bn.beta, mm, mv, eps=1e-5, momentum=0.9, training=True)
    torch.testing.assert_close(y, bn(x))
    torch.testing.assert_close(mm, bn.moving_mean)
    torch.testing.assert_close(mv, bn.moving_var)
