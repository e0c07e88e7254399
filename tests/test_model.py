import pytest
import torch
from torch import nn

from bn_lenet.network.batchnorm import BatchNorm
from bn_lenet.network.model import bn_layers, bn_params, copy_weights, lenet
from bn_lenet.network.pool import AvgPool2x2


def test_lenet_shapes_follow_the_tutorial():
    net = lenet("scratch")
    x = torch.rand(4, 1, 28, 28)
    shapes = []
    for name, layer in net.named_children():
        x = layer(x)
        shapes.append((name, tuple(x.shape)))
    assert shapes == [("conv1", (4, 6, 12, 12)), ("conv2", (4, 16, 4, 4)), ("flatten", (4, 256)),
                      ("fc1", (4, 120)), ("fc2", (4, 84)), ("fc3", (4, 10))]


@pytest.mark.parametrize("norm,kind", [("scratch", BatchNorm), ("torch", nn.modules.batchnorm._BatchNorm)])
def test_bn_layers_are_named_and_of_the_chosen_kind(norm, kind):
    layers = bn_layers(lenet(norm))
    assert list(layers) == ["conv1.bn", "conv2.bn", "fc1.bn", "fc2.bn"]
    assert all(isinstance(m, kind) for m in layers.values())
    params = bn_params(lenet(norm))
    assert [len(p["gamma"]) for p in params.values()] == [6, 16, 120, 84]


def test_no_bn_lenet_has_no_bn_layers_and_same_conv_linear_shapes():
    assert bn_layers(lenet("none")) == {}
    assert lenet("none")(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="unknown norm 'batch'"):
        lenet("batch")


def test_same_seed_gives_same_init_for_scratch_and_torch():
    torch.manual_seed(3)
    a = lenet("scratch")
    torch.manual_seed(3)
    b = lenet("torch")
    assert torch.equal(a.conv1.conv.weight, b.conv1.conv.weight)
    assert torch.equal(a.fc3.weight, b.fc3.weight)


def test_copy_weights_makes_scratch_and_torch_lenets_compute_the_same_function():
    a, b = lenet("scratch").double(), lenet("torch").double()
    copy_weights(a, b)
    x = torch.rand(8, 1, 28, 28, dtype=torch.double)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("shape", [(8, 6, 24, 24), (8, 16, 8, 8), (3, 2, 7, 9)])  # the last: odd, falls back
def test_our_2x2_avg_pool_gives_nn_AvgPool2d_values_and_gradients(shape):
    x = torch.randn(shape, dtype=torch.double, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = AvgPool2x2()(x), nn.AvgPool2d(2, 2)(x2)
    up = torch.randn_like(y2).transpose(-1, -2).contiguous().transpose(-1, -2)  # a non-contiguous gradient
    (y * up).sum().backward()
    (y2 * up).sum().backward()
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_lenet_pools_with_our_2x2_avg_pool():
    net = lenet("torch")
    assert isinstance(net.conv1.pool, AvgPool2x2) and isinstance(net.conv2.pool, AvgPool2x2)
