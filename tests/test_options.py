"""The model and BN options, each checked from first principles: parameter counts, the order of
layers, outputs against PyTorch's functional forms and hand-written formulas, moving statistics after one
step against the formula, fixed gamma/beta after SGD steps, ghost groups, and that the default is untouched.
"""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bn_lenet.training import config
from bn_lenet.network.batchnorm import batch_norm
from bn_lenet.network.model import bn_params, count_parameters, from_config, init_weights, lenet
from bn_lenet.network.pool import AvgPool2x2
from bn_lenet.training.train import fit, make_optimizer, train_step


def build(*overrides):
    return from_config(config.resolve(None, list(overrides)))


def dims_of(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def per_channel(t, ndim):
    return t.view(1, -1) if ndim == 2 else t.view(1, -1, 1, 1)


# --- the default network is the one main builds, and trains to the same numbers bitwise ------------------

class MainBatchNorm(nn.Module):
    """main's scratch BatchNorm module as it was before the options: the functional batch_norm with the
    tutorial's conventions, nothing else."""

    def __init__(self, c):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("moving_mean", torch.zeros(c))
        self.register_buffer("moving_var", torch.ones(c))

    def forward(self, x):
        return batch_norm(x, self.gamma, self.beta, self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9,
                          training=self.training, unbiased=False)


def main_lenet(norm):
    """The network exactly as main's lenet(norm) built it, written out by hand."""
    def bn(c, nd):
        if norm == "scratch":
            return [("bn", MainBatchNorm(c))]
        return [("bn", (nn.BatchNorm2d if nd == 4 else nn.BatchNorm1d)(c))] if norm == "torch" else []
    seq = lambda *layers: nn.Sequential(OrderedDict(layers))  # noqa: E731
    net = seq(("conv1", seq(("conv", nn.Conv2d(1, 6, 5)), *bn(6, 4), ("act", nn.Sigmoid()), ("pool", AvgPool2x2()))),
              ("conv2", seq(("conv", nn.Conv2d(6, 16, 5)), *bn(16, 4), ("act", nn.Sigmoid()), ("pool", AvgPool2x2()))),
              ("flatten", nn.Flatten()),
              ("fc1", seq(("linear", nn.Linear(256, 120)), *bn(120, 2), ("act", nn.Sigmoid()))),
              ("fc2", seq(("linear", nn.Linear(120, 84)), *bn(84, 2), ("act", nn.Sigmoid()))),
              ("fc3", nn.Linear(84, 10)))
    init_weights(net)
    return net


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["scratch", "torch", "none"])
def test_default_configs_train_bitwise_as_main_built_the_network(norm, fashion_mnist):
    cfg = config.resolve(None, [f"model.norm={norm}", "train.epochs=1", "train.limit_batches=6",
                                "train.threads=1"])
    torch.set_num_threads(1)
    results = []
    for make in (lambda: from_config(cfg), lambda: main_lenet(norm)):
        torch.manual_seed(0)
        net = make()
        [stats] = fit(net, fashion_mnist, cfg)
        results.append(((stats.loss, stats.train_acc, stats.test_acc), net.state_dict()))
    (ours, ours_state), (main, main_state) = results
    assert ours == main
    assert list(ours_state) == list(main_state)
    assert all(torch.equal(ours_state[k], main_state[k]) for k in main_state)


def test_default_network_keeps_its_parameter_count_and_state_dict_names():
    net = build()
    assert count_parameters(net) == 44_878
    assert list(net.state_dict()) == list(lenet("scratch").state_dict())
    assert {"conv1.bn.gamma", "conv1.bn.beta", "conv1.bn.moving_mean", "conv1.bn.moving_var"} <= set(net.state_dict())


# --- parameter counts, layers, order ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides,expected", [
    ([], 44_878),
    (["model.bias=false"], 44_878 - (6 + 16 + 120 + 84)),               # the biases before BN: 226
    (["model.norm=torch", "model.bias=false"], 44_878 - 226),
    (["model.norm=none"], 44_878 - 2 * 226),                             # no gamma/beta
    (["model.norm=layer"], 44_878), (["model.norm=group"], 44_878),      # per-channel gamma/beta as BN
    (["bn.scale=false"], 44_878 - 226), (["bn.scale=false", "bn.center=false"], 44_878 - 2 * 226),
    (['model.norm_layers=["conv1"]'], 44_878 - 2 * 226 + 2 * 6),
    (['model.norm_layers=["fc2"]', "model.bias=false"], 44_878 - 2 * 226 + 2 * 84 - 84),  # only fc2's bias goes
])
def test_trainable_parameter_counts(overrides, expected):
    assert count_parameters(build(*overrides)) == expected


def forward_order(net):
    order = []
    for name, m in net.named_modules():
        if not list(m.children()):
            m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
    net(torch.rand(4, 1, 28, 28))
    return order


def test_placement_before_is_the_tutorials_order_and_after_puts_the_norm_after_the_activation():
    assert forward_order(build())[:9] == ["conv1.conv", "conv1.bn", "conv1.act", "conv1.pool",
                                         "conv2.conv", "conv2.bn", "conv2.act", "conv2.pool", "flatten"]
    assert forward_order(build("model.placement=after")) == [
        "conv1.conv", "conv1.act", "conv1.bn", "conv1.pool", "conv2.conv", "conv2.act", "conv2.bn", "conv2.pool",
        "flatten", "fc1.linear", "fc1.act", "fc1.bn", "fc2.linear", "fc2.act", "fc2.bn", "fc3"]


def test_norm_layers_choose_which_layers_carry_a_norm_and_bias_goes_only_there():
    net = build('model.norm_layers=["conv2", "fc1"]', "model.bias=false")
    assert list(bn_params(net)) == ["conv2.bn", "fc1.bn"]
    assert net.conv2.conv.bias is None and net.fc1.linear.bias is None
    assert net.conv1.conv.bias is not None and net.fc2.linear.bias is not None and net.fc3.bias is not None
    assert list(bn_params(build("model.norm_layers=[]"))) == []


def test_relu_activation_everywhere():
    net = build("model.activation=relu")
    acts = [m for name, m in net.named_modules() if name.endswith(".act")]
    assert len(acts) == 4 and all(isinstance(a, nn.ReLU) for a in acts)


# --- presets: outputs and one step of moving statistics ----------------------------------------------------

PRESETS = {"tutorial": (0.9, 1e-5, False), "pytorch": (0.9, 1e-5, True), "keras": (0.99, 1e-3, False)}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("layer", ["conv1", "fc1"])
def test_scratch_under_each_preset_matches_F_batch_norm_and_the_moving_statistics_formula(preset, layer):
    m, eps, unbiased = PRESETS[preset]
    bn = getattr(build(f"bn.preset={preset}"), layer).bn.double()
    with torch.no_grad():
        bn.gamma.uniform_(0.5, 1.5), bn.beta.normal_()
    c = bn.num_features
    x = torch.randn((32, c) if layer == "fc1" else (8, c, 5, 5), dtype=torch.double) * 2 + 1
    y = bn(x)
    want = F.batch_norm(x, None, None, bn.gamma, bn.beta, training=True, eps=eps)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    n = x.numel() // c
    mean, var = x.mean(dims_of(x)), x.var(dims_of(x), correction=0)
    batch_var = var * n / (n - 1) if unbiased else var
    torch.testing.assert_close(bn.moving_mean, (1 - m) * mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.moving_var, m * 1 + (1 - m) * batch_var, rtol=1e-12, atol=1e-12)
    bn.eval()
    torch.testing.assert_close(bn(x), F.batch_norm(x, bn.moving_mean, bn.moving_var, bn.gamma, bn.beta,
                                                   training=False, eps=eps), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overrides,m,eps", [([], 0.9, 1e-5), (["bn.momentum=0.99", "bn.eps=1e-3"], 0.99, 1e-3),
                                             (["bn.preset=keras", "bn.unbiased=true"], 0.99, 1e-3)])
def test_torch_norm_takes_the_kept_weight_momentum_and_eps(overrides, m, eps):
    bn = build("model.norm=torch", *overrides).fc1.bn.double()
    x = torch.randn(16, 120, dtype=torch.double)
    y = bn(x)
    torch.testing.assert_close(y, F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=eps))
    assert bn.eps == eps
    torch.testing.assert_close(bn.running_mean, (1 - m) * x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, m + (1 - m) * x.var(0, correction=1), rtol=1e-12, atol=1e-12)


def test_torch_default_momentum_is_exactly_pytorchs():
    assert build("model.norm=torch").conv1.bn.momentum == 0.1  # not 1 - 0.9 = 0.09999999999999998


def test_explicit_keys_override_their_part_of_the_preset():
    bn = build("bn.preset=keras", "bn.eps=0.01").conv1.bn
    assert (bn.momentum, bn.eps, bn.unbiased) == (0.99, 0.01, False)


# --- layer and group norm -------------------------------------------------------------------------------------

def layer_norm_by_hand(x, gamma, beta, eps):
    """Each example normalized over all its channels and positions, then per-channel gamma and beta."""
    flat = x.reshape(x.shape[0], -1)
    mean, var = flat.mean(1), flat.var(1, correction=0)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * per_channel(gamma, x.ndim) + \
        per_channel(beta, x.ndim)


@pytest.mark.parametrize("layer", ["conv2", "fc2"])
@pytest.mark.parametrize("preset,eps", [("", 1e-5), ("keras", 1e-3)])
def test_layer_norm_normalizes_each_example_over_all_its_channels(layer, preset, eps):
    net = build("model.norm=layer", *([f"bn.preset={preset}"] if preset else [])).double()
    ln = getattr(net, layer).ln
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5), ln.bias.normal_()
    c = ln.num_channels
    x = torch.randn((6, c) if layer == "fc2" else (6, c, 4, 4), dtype=torch.double) * 3 + 2
    for mode in (True, False):  # no batch statistics: train and eval are the same
        ln.train(mode)
        torch.testing.assert_close(ln(x), layer_norm_by_hand(x, ln.weight, ln.bias, eps), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ln(x), F.group_norm(x, 1, ln.weight, ln.bias, eps))


@pytest.mark.parametrize("layer", ["conv1", "fc1"])
@pytest.mark.parametrize("groups", [2, 3])
def test_group_norm_matches_F_group_norm_and_normalizes_each_group_by_hand(layer, groups):
    net = build("model.norm=group", f"bn.groups={groups}", 'model.norm_layers=["conv1", "fc1", "fc2"]').double()
    gn = getattr(net, layer).gn
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5), gn.bias.normal_()
    c = gn.num_channels
    x = torch.randn((5, c) if layer == "fc1" else (5, c, 3, 3), dtype=torch.double) * 2 - 1
    y = gn(x)
    torch.testing.assert_close(y, F.group_norm(x, groups, gn.weight, gn.bias, 1e-5))
    # By hand: the channels of group k of one example, normalized together.
    k = c // groups
    part = x[:, k:2 * k]
    flat = part.reshape(5, -1)
    shape = (-1,) + (1,) * (x.ndim - 1)
    hat = (part - flat.mean(1).view(shape)) / torch.sqrt(flat.var(1, correction=0).view(shape) + 1e-5)
    torch.testing.assert_close(y[:, k:2 * k], hat * per_channel(gn.weight[k:2 * k], x.ndim) +
                               per_channel(gn.bias[k:2 * k], x.ndim))


def test_every_norm_layer_is_in_bn_params_with_a_clear_name():
    assert list(bn_params(build("model.norm=layer"))) == ["conv1.ln", "conv2.ln", "fc1.ln", "fc2.ln"]
    params = bn_params(build("model.norm=group"))
    assert list(params) == ["conv1.gn", "conv2.gn", "fc1.gn", "fc2.gn"]
    assert [len(p["gamma"]) for p in params.values()] == [6, 16, 120, 84]


# --- fixed gamma / beta ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("norm", ["scratch", "torch", "layer", "group"])
def test_fixed_gamma_and_beta_stay_exactly_one_and_zero_after_sgd_steps(norm):
    net = build(f"model.norm={norm}", "bn.scale=false", "bn.center=false")
    trained = build(f"model.norm={norm}", "bn.center=false")  # gamma trained, beta fixed
    for model in (net, trained):
        opt = make_optimizer(model, 1.0)
        for _ in range(3):
            train_step(model, opt, torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    for name, p in bn_params(net).items():
        assert set(p["gamma"]) == {1.0} and set(p["beta"]) == {0.0}, name
    for name, p in bn_params(trained).items():
        assert set(p["gamma"]) != {1.0} and set(p["beta"]) == {0.0}, name
    gamma_key = "conv1.bn.gamma" if norm == "scratch" else ("conv1.bn.weight" if norm == "torch" else None)
    if gamma_key:  # still in the state dict under its usual name (a buffer), never among the parameters
        assert gamma_key in net.state_dict() and gamma_key not in dict(net.named_parameters())


# --- lite BN ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", ["mean", "var"])
@pytest.mark.parametrize("layer", ["conv1", "fc1"])
def test_lite_bn_only_centers_or_only_scales_in_training_and_eval(normalize, layer):
    bn = getattr(build(f"bn.normalize={normalize}"), layer).bn.double()
    with torch.no_grad():
        bn.gamma.uniform_(0.5, 1.5), bn.beta.normal_()
    c = bn.num_features
    x = torch.randn((32, c) if layer == "fc1" else (8, c, 5, 5), dtype=torch.double) * 2 + 3
    g, b = per_channel(bn.gamma, x.ndim), per_channel(bn.beta, x.ndim)
    mean, var = x.mean(dims_of(x)), x.var(dims_of(x), correction=0)

    def by_hand(mean, var):
        if normalize == "mean":
            return g * (x - per_channel(mean, x.ndim)) + b
        return g * x / torch.sqrt(per_channel(var, x.ndim) + 1e-5) + b
    torch.testing.assert_close(bn(x), by_hand(mean, var), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.moving_mean, 0.1 * mean, rtol=1e-12, atol=1e-12)   # still kept up to date
    torch.testing.assert_close(bn.moving_var, 0.9 + 0.1 * var, rtol=1e-12, atol=1e-12)
    bn.eval()
    torch.testing.assert_close(bn(x), by_hand(bn.moving_mean, bn.moving_var), rtol=1e-12, atol=1e-12)


def test_lite_bn_trains_by_autograd_with_gradients_for_gamma_and_beta():
    net = build("bn.normalize=var")
    opt = make_optimizer(net, 0.5)
    before = net.conv1.bn.gamma.detach().clone()
    train_step(net, opt, torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    assert not torch.equal(before, net.conv1.bn.gamma)


# --- ghost batches ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["tutorial", "pytorch"])
@pytest.mark.parametrize("layer,shape", [("conv1", (10, 6, 4, 4)), ("fc1", (10, 120))])
def test_ghost_groups_are_each_normalized_with_their_own_statistics(preset, layer, shape):
    _, eps, unbiased = PRESETS[preset]
    bn = getattr(build("bn.ghost_batch=4", f"bn.preset={preset}"), layer).bn.double()
    with torch.no_grad():
        bn.gamma.uniform_(0.5, 1.5), bn.beta.normal_()
    x = torch.randn(shape, dtype=torch.double) * torch.arange(1, 11, dtype=torch.double).view(-1, *[1] * (len(shape) - 1))
    y = bn(x)
    groups = [x[0:4], x[4:8], x[8:10]]  # the last, smaller group keeps its own statistics
    for part, got in zip(groups, y.split([4, 4, 2])):
        torch.testing.assert_close(got, F.batch_norm(part, None, None, bn.gamma, bn.beta, training=True, eps=eps),
                                   rtol=1e-12, atol=1e-12)
    # Moving statistics: what 3 ranks, each a normal BN step on its own group, hold after averaging theirs.
    ranks = []
    for part in groups:
        mean, var = part.mean(dims_of(part)), part.var(dims_of(part), correction=1 if unbiased else 0)
        ranks.append((0.9 * 0 + 0.1 * mean, 0.9 * 1 + 0.1 * var))
    torch.testing.assert_close(bn.moving_mean, sum(r[0] for r in ranks) / 3, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.moving_var, sum(r[1] for r in ranks) / 3, rtol=1e-12, atol=1e-12)


def test_a_last_ghost_group_of_one_example_joins_the_group_before():
    bn = build("bn.ghost_batch=4").fc1.bn.double()
    x = torch.randn(9, 120, dtype=torch.double)
    y = bn(x)
    torch.testing.assert_close(y[4:], F.batch_norm(x[4:], None, None, bn.gamma, bn.beta, training=True, eps=1e-5),
                               rtol=1e-12, atol=1e-12)


def test_ghost_batch_of_the_whole_batch_is_plain_bn():
    ghost, plain = build("bn.ghost_batch=16").double(), build().double()
    plain.load_state_dict(ghost.state_dict())
    x = torch.rand(16, 1, 28, 28, dtype=torch.double)
    torch.testing.assert_close(ghost(x), plain(x), rtol=1e-12, atol=1e-12)
