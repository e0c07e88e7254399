"""log.landscape (bn_lenet/training/landscape.py): the figures against a hand computation on a tiny linear model,
the measurement leaving the model, its statistics and the RNG untouched, and landscape.jsonl from real runs that
train exactly as without it."""

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from helpers import quiet
from torch import nn

from bn_lenet.network.model import from_config
from bn_lenet.training import config, runs
from bn_lenet.training.data import to_float
from bn_lenet.training.landscape import SCALES, layer_weights, measure
from bn_lenet.training.train import make_optimizer

pytestmark = pytest.mark.usefixtures("quick_runs")

QUICK = ["train.epochs=2", "train.limit_batches=3", "train.batch_size=64", "train.threads=1", "train.device=cpu"]
TIMING = ("examples_per_sec", "seconds")
FIELDS = {"step", "epoch", "loss", "loss_min", "loss_max", "grad_norm", "step_norm", "grad_change",
          "beta_smoothness", "ics_l2", "ics_cos"}



# --- the figures, by hand ---------------------------------------------------------------------------------------

W1 = np.array([[0.7, -0.4], [0.2, 1.1]])   # layer l1: 2 -> 2
W2 = np.array([[-1.3, 0.5]])               # layer l2: 2 -> 1
X = np.array([[0.9, -0.3], [0.4, 1.2], [-0.6, 0.8]])
Y = np.array([0.4, -1.0, 0.3])
LR, WD = 0.3, 0.05


def loss_and_grads(w1, w2):
    """L = mean over the batch of (W2 W1 x - y)^2 / 2, and its gradients in closed form."""
    h = X @ w1.T                 # (n, 2)
    r = (h @ w2.T)[:, 0] - Y     # residuals (n,)
    n = len(Y)
    g2 = (r[:, None] * h).sum(0, keepdims=True) / n                # dL/dW2 = mean r h^T
    g1 = (r[:, None, None] * (w2.T[None] * X[:, None, :])).sum(0) / n  # dL/dW1 = mean r W2^T x^T
    return 0.5 * np.mean(r ** 2), g1, g2


def by_hand():
    loss, g1, g2 = loss_and_grads(W1, W2)
    d1, d2 = -LR * (g1 + WD * W1), -LR * (g2 + WD * W2)  # SGD with weight decay on both weights
    step = math.sqrt((d1 ** 2).sum() + (d2 ** 2).sum())
    losses, changes, smooth = [], [], []
    for c in SCALES:
        loss_c, g1c, g2c = loss_and_grads(W1 + c * d1, W2 + c * d2)
        change = math.sqrt(((g1c - g1) ** 2).sum() + ((g2c - g2) ** 2).sum())
        losses.append(loss_c)
        changes.append(change)
        smooth.append(change / (c * step))
    _, _, g2_moved = loss_and_grads(W1 + d1, W2)  # l1 (below l2) took its step; l2 did not
    G, G2 = g2.ravel(), g2_moved.ravel()
    return {"loss": loss, "loss_min": min(losses), "loss_max": max(losses),
            "grad_norm": math.sqrt((g1 ** 2).sum() + (g2 ** 2).sum()), "step_norm": step,
            "grad_change": max(changes), "beta_smoothness": max(smooth),
            "ics_l2": {"l2": float(np.linalg.norm(G - G2))},
            "ics_cos": {"l2": float(G @ G2 / (np.linalg.norm(G) * np.linalg.norm(G2)))}}


def tiny():
    net = nn.Sequential(OrderedDict(l1=nn.Linear(2, 2, bias=False), l2=nn.Linear(2, 1, bias=False))).double()
    with torch.no_grad():
        net.l1.weight.copy_(torch.from_numpy(W1))
        net.l2.weight.copy_(torch.from_numpy(W2))
    return net


def half_mse(out, y):
    return 0.5 * ((out[:, 0] - y) ** 2).mean()


def test_the_figures_match_a_hand_computation_on_a_two_layer_linear_model():
    net = tiny()
    got = measure(net, make_optimizer(net, LR, WD), torch.from_numpy(X), torch.from_numpy(Y), loss_fn=half_mse)
    want = by_hand()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            assert got[key].keys() == value.keys()
            for layer in value:
                assert math.isclose(got[key][layer], value[layer], rel_tol=1e-9), (key, layer)
        else:
            assert math.isclose(got[key], value, rel_tol=1e-9), key
    assert -1 < want["ics_cos"]["l2"] < 0.999  # a real shift, not a degenerate case
    assert torch.equal(net.l1.weight, torch.from_numpy(W1)) and torch.equal(net.l2.weight, torch.from_numpy(W2))


def test_layers_are_lenets_blocks_each_with_its_conv_or_linear_weight():
    net = from_config(config.resolve(None, []))
    names = [n for n, _ in net.named_parameters()]
    got = [(layer, names[w], [names[i] for i in owned]) for layer, w, owned in layer_weights(net)]
    assert [(layer, w) for layer, w, _ in got] == [("conv1", "conv1.conv.weight"), ("conv2", "conv2.conv.weight"),
                                                   ("fc1", "fc1.linear.weight"), ("fc2", "fc2.linear.weight"),
                                                   ("fc3", "fc3.weight")]
    assert got[0][2] == ["conv1.conv.weight", "conv1.conv.bias", "conv1.bn.gamma", "conv1.bn.beta"]


@pytest.mark.slow
def test_measuring_leaves_the_model_its_statistics_gradients_and_the_rng_as_they_were(small_data):
    torch.manual_seed(0)
    net = from_config(config.resolve(None, ["model.dropout=0.5"]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images, labels = to_float(small_data.train_images[:64]), small_data.train_labels[:64]
    rng = torch.get_rng_state()
    row = measure(net, make_optimizer(net, 1.0), images, labels)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # moving statistics too
    assert all(p.grad is None for p in net.parameters()) and net.training
    # With dropout, the loss measured is the one the step computes next, with the same mask.
    loss = torch.nn.functional.cross_entropy(net(images), labels)
    assert row["loss"] == loss.item()
    assert set(row["ics_l2"]) == {"conv2", "fc1", "fc2", "fc3"} and all(v > 0 for v in row["ics_l2"].values())
    assert row["loss_min"] <= row["loss_max"] and row["beta_smoothness"] > 0


# --- real runs --------------------------------------------------------------------------------------------------

def run(tmp_path, data, *overrides, name):
    out = tmp_path / name
    cfg = config.resolve(None, QUICK + list(overrides))
    assert runs.train_run(cfg, out=out, data=data, log=quiet)["status"] == "finished"
    return out


def rows_and_weights(out):
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_metrics(out)]
    return rows, torch.load(out / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("extra", [[], ["model.dropout=0.5", "train.weight_decay=0.01", "model.norm=torch"]],
                         ids=["default", "dropout+decay+torch"])
def test_a_run_with_the_landscape_writes_its_rows_and_trains_exactly_as_without(tmp_path, small_data, extra):
    plain = run(tmp_path, small_data, *extra, name="plain")
    out = run(tmp_path, small_data, *extra, "log.landscape=true", "log.landscape_every=2", name="landscape")
    (rows, w), (plain_rows, plain_w) = rows_and_weights(out), rows_and_weights(plain)
    assert rows == plain_rows and all(torch.equal(w[k], plain_w[k]) for k in plain_w)
    lines = [json.loads(line) for line in (out / "landscape.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in lines] == [(1, 1), (3, 1), (5, 2)]  # steps 1, 1 + 2, ... of 6
    for r in lines:
        assert set(r) == FIELDS and set(r["ics_cos"]) == {"conv2", "fc1", "fc2", "fc3"}
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in FIELDS - {"step", "epoch", "ics_l2",
                                                                                         "ics_cos"})
        assert all(-1 <= v <= 1 for v in r["ics_cos"].values())
    assert not (plain / "landscape.jsonl").exists()


def test_the_landscape_runs_on_a_network_without_norm(tmp_path, small_data):
    out = run(tmp_path, small_data, "train.epochs=1", "model.norm=none", "log.landscape=true",
              "log.landscape_every=5", name="none")
    [row] = [json.loads(line) for line in (out / "landscape.jsonl").read_text().splitlines()]
    assert row["step"] == 1 and row["grad_change"] > 0
