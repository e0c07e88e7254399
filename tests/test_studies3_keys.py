"""The keys the dropout, init and regularization studies need: model.dropout, model.init, model.init_scale,
train.weight_decay, eval.precise_bn_epochs, log.eval_every (curve.jsonl). log.landscape is in tests/test_landscape.py.

Each bad value or useless combination is one ConfigError line; at their defaults the keys change nothing (the
same network, optimizer and numbers as without them); each does what it says, checked by hand."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import quiet
from torch import nn

from bn_lenet.cli import main
from bn_lenet.errors import ConfigError
from bn_lenet.network.model import from_config, lenet
from bn_lenet.training import config, plots, runs
from bn_lenet.training.curve import eval_steps
from bn_lenet.training.train import batch_stats_test_acc, make_optimizer, reestimate_bn

pytestmark = pytest.mark.usefixtures("threads_restored")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "scratch_bn.toml")
QUICK = ["train.epochs=2", "train.limit_batches=4", "train.batch_size=64", "train.threads=1", "train.device=cpu"]
TIMING = ("examples_per_sec", "seconds")
DEFAULTS = ["model.dropout=0", 'model.init="xavier"', "model.init_scale=1", "train.weight_decay=0",
            'eval.precise_bn_epochs="all"', "log.eval_every=0", "log.landscape=false", "log.landscape_every=50"]



def run(tmp_path, data, *overrides, name="run", figures=False):
    """A short real run (figures drawn only when asked: they are the slow part)."""
    cfg = config.resolve(None, QUICK + list(overrides))
    out = tmp_path / name
    with pytest.MonkeyPatch.context() as m:
        if not figures:
            m.setattr(plots, "curves", quiet)
            m.setattr(plots, "bn_params", quiet)
        assert runs.train_run(cfg, out=out, data=data, log=quiet)["status"] == "finished"
    return out


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --- refusals ---------------------------------------------------------------------------------------------------

REFUSALS = [
    (["model.dropout=1"], ["model.dropout = 1.0 is out of range", "[0, 1)"]),
    (["model.dropout=-0.1"], ["model.dropout = -0.1 is out of range"]),
    (["model.dropout=nan"], ["model.dropout = nan is out of range"]),
    (["model.init=he"], ["model.init = 'he' is not allowed", "xavier, torch, kaiming"]),
    (["model.init_scale=0"], ["model.init_scale = 0.0 is out of range", "> 0"]),
    (["model.init_scale=-2"], ["model.init_scale = -2.0 is out of range"]),
    (["model.init_scale=inf"], ["model.init_scale = inf is out of range"]),
    (["train.weight_decay=-1e-4"], ["train.weight_decay = -0.0001 is out of range", ">= 0"]),
    (["train.weight_decay=nan"], ["train.weight_decay = nan is out of range"]),
    (["eval.precise_bn_epochs=first", "eval.precise_bn=true"], ["eval.precise_bn_epochs = 'first' is out of range",
                                                                '"all" or "last"']),
    (["eval.precise_bn_epochs=last"], ["eval.precise_bn_epochs = 'last' has no effect without eval.precise_bn"]),
    (["log.eval_every=-0.25"], ["log.eval_every = -0.25 is out of range", "(0, 1]"]),
    (["log.eval_every=1.5"], ["log.eval_every = 1.5 is out of range"]),
    (["log.eval_every=0.5", "train.processes=2"], ["log.eval_every = 0.5 cannot be used with train.processes = 2"]),
    (["log.landscape_every=0", "log.landscape=true"], ["log.landscape_every = 0 is out of range", ">= 1"]),
    (["log.landscape_every=10"], ["log.landscape_every = 10 has no effect without log.landscape = true"]),
    (["log.landscape=true", "train.cuda_graph=true"], ["log.landscape = true cannot be used with train.cuda_graph"]),
    (["log.landscape=true", "train.compile=true"], ["log.landscape = true cannot be used with train.compile"]),
    (["log.landscape=true", "train.processes=2"], ["log.landscape = True cannot be used with train.processes = 2"]),
    (["model.dropout=0.5x"], ["model.dropout must be float"]),
]
IDS = ["|".join(o) for o, _ in REFUSALS]


@pytest.mark.parametrize("overrides,fragments", REFUSALS, ids=IDS)
def test_each_bad_value_or_useless_combination_is_one_config_error(overrides, fragments):
    with pytest.raises(ConfigError) as e:
        config.resolve(None, overrides)
    assert "\n" not in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value), f"{fragment!r} not in {str(e.value)!r}"


@pytest.mark.parametrize("overrides,fragments", REFUSALS[::4], ids=IDS[::4])
def test_the_cli_refuses_with_one_error_line_and_writes_nothing(overrides, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", CONFIG, "--out", str(out)]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragments[0] in err
    assert not out.exists()


def test_a_torchrun_job_refuses_the_measurements_of_one_process():
    cfg = config.resolve(None, ["log.landscape=true"])
    with pytest.raises(ConfigError, match="cannot be used with a torchrun job of 2 processes"):
        config.check_processes(cfg, world=2)


@pytest.mark.parametrize("overrides", [
    ["model.dropout=0.5", "model.init=kaiming", "model.init_scale=0.5", "train.weight_decay=5e-4"],
    ["model.init=torch", "model.norm=none", "model.dropout=0.9"],
    ["eval.precise_bn=true", "eval.precise_bn_epochs=last", "log.eval_every=1"],
    ["log.landscape=true", "log.landscape_every=1", "model.norm=group", "train.precision=bf16"],
    ["log.eval_every=0.25", "train.cuda_graph=true"],
])
def test_sensible_combinations_are_accepted_and_round_trip_through_config_toml(overrides, tmp_path):
    cfg = config.resolve(None, overrides)
    (tmp_path / "config.toml").write_text(config.to_toml(cfg))
    assert config.validate(config.load(tmp_path / "config.toml")) == cfg


# --- defaults change nothing ------------------------------------------------------------------------------------

def test_at_their_defaults_the_keys_build_the_same_network_and_optimizer():
    torch.manual_seed(0)
    plain = lenet("scratch")
    torch.manual_seed(0)
    cfg = config.resolve(None, DEFAULTS)
    built = from_config(cfg)
    assert [n for n, _ in built.named_modules()] == [n for n, _ in plain.named_modules()]  # no dropout module
    assert same_weights(built.state_dict(), plain.state_dict())
    assert len(make_optimizer(built, 1.0, cfg.train.weight_decay).param_groups) == 1


def test_the_default_init_is_the_tutorials_xavier_uniform_drawn_after_pytorchs_own():
    # Independently: the layers built in network order (each draws PyTorch's init), then Xavier-uniform on each
    # conv/linear weight in that order.
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5), nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)]
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
    torch.manual_seed(0)
    net = lenet("scratch")
    ours = [net.conv1.conv, net.conv2.conv, net.fc1.linear, net.fc2.linear, net.fc3]
    for a, b in zip(layers, ours):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_a_run_with_every_key_at_its_default_trains_bitwise_as_one_without_them(tmp_path, small_data):
    plain = run(tmp_path, small_data, name="plain")
    explicit = run(tmp_path, small_data, *DEFAULTS, name="explicit")
    assert without_timing(runs.read_metrics(explicit)) == without_timing(runs.read_metrics(plain))
    assert same_weights(weights(explicit), weights(plain))
    assert not (explicit / "curve.jsonl").exists() and not (explicit / "landscape.jsonl").exists()


def test_inspect_names_the_new_model_keys_only_when_set():
    from bn_lenet.network.options import describe
    assert describe(config.resolve(None, []))[0].endswith("activation sigmoid, bias true")
    line = describe(config.resolve(None, ["model.dropout=0.25", "model.init=kaiming", "model.init_scale=2"]))[0]
    assert line.endswith("bias true, dropout 0.25, init kaiming x 2")


# --- model.dropout ----------------------------------------------------------------------------------------------

def test_dropout_sits_after_fc1_and_fc2_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    net = from_config(config.resolve(None, ["model.dropout=0.5"]))
    for block in (net.fc1, net.fc2):
        names = [n for n, _ in block.named_children()]
        assert names == ["linear", "bn", "act", "drop"] and block.drop.p == 0.5
    after = from_config(config.resolve(None, ["model.dropout=0.5", "model.placement=after"]))
    assert [n for n, _ in after.fc1.named_children()] == ["linear", "act", "bn", "drop"]
    x = torch.rand(32, 1, 28, 28)
    torch.manual_seed(0)
    plain = from_config(config.resolve(None, []))
    plain.load_state_dict(net.state_dict())  # dropout has no state: the same weights
    net.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))  # eval: no dropout at all
        net.train(), plain.train()
        hidden = net.fc1(net.flatten(net.conv2(net.conv1(x))))
        zeros = (hidden == 0).float().mean().item()
        assert 0.4 < zeros < 0.6  # about half the fc1 units zeroed, the rest scaled by 2
        assert not torch.equal(net(x), plain(x)) and not torch.equal(net(x), net(x))


def test_batch_stats_accuracy_and_precise_bn_measure_the_network_without_dropout(small_data):
    torch.manual_seed(0)
    net = from_config(config.resolve(None, ["model.dropout=0.5"]))
    plain = from_config(config.resolve(None, []))
    plain.load_state_dict(net.state_dict())
    images, labels = small_data.test_images[:300], small_data.test_labels[:300]
    assert batch_stats_test_acc(net, images, labels, 128) == batch_stats_test_acc(plain, images, labels, 128)
    reestimate_bn(net, small_data.train_images[:256], 128)
    reestimate_bn(plain, small_data.train_images[:256], 128)
    assert same_weights(net.state_dict(), plain.state_dict())  # the same re-estimated statistics
    assert net.training  # the mode is given back


def test_dropout_changes_training(tmp_path, small_data):
    plain = run(tmp_path, small_data, "train.epochs=1", name="plain")
    dropped = run(tmp_path, small_data, "train.epochs=1", "model.dropout=0.5", name="dropout")
    assert runs.read_metrics(dropped)[0]["loss"] != runs.read_metrics(plain)[0]["loss"]


# --- train.weight_decay -----------------------------------------------------------------------------------------

def test_weight_decay_goes_to_the_conv_and_linear_weights_only():
    torch.manual_seed(0)
    net = from_config(config.resolve(None, ["model.norm=torch"]))
    decayed, rest = make_optimizer(net, 0.5, 1e-3).param_groups
    names = {id(p): n for n, p in net.named_parameters()}
    assert [names[id(p)] for p in decayed["params"]] == ["conv1.conv.weight", "conv2.conv.weight",
                                                         "fc1.linear.weight", "fc2.linear.weight", "fc3.weight"]
    assert decayed["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    # Not decayed: every bias, and nn.BatchNorm's gamma and beta (its "weight" and "bias").
    assert [names[id(p)] for p in rest["params"]] == [n for n in names.values() if n.endswith(".bias") or ".bn." in n]
    assert len(decayed["params"]) + len(rest["params"]) == len(list(net.parameters())) == 18


def test_one_sgd_step_with_weight_decay_by_hand():
    torch.manual_seed(0)
    net = from_config(config.resolve(None, []))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    lr, wd = 0.5, 0.01
    opt = make_optimizer(net, lr, wd)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    opt.step()
    for n, p in net.named_parameters():
        decay = wd if n.endswith(("conv.weight", "linear.weight", "fc3.weight")) else 0.0
        torch.testing.assert_close(p.detach(), before[n] - lr * (grads[n] + decay * before[n]), rtol=0, atol=1e-7)
        if n == "conv1.bn.gamma":
            torch.testing.assert_close(p.detach(), before[n] - lr * grads[n], rtol=0, atol=0)


# --- model.init, model.init_scale -------------------------------------------------------------------------------

def conv_linear(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("init", ["xavier", "torch", "kaiming"])
def test_init_scale_multiplies_exactly_the_initial_weights(init):
    torch.manual_seed(3)
    one = from_config(config.resolve(None, [f"model.init={init}"]))
    torch.manual_seed(3)
    three = from_config(config.resolve(None, [f"model.init={init}", "model.init_scale=3"]))
    for a, b in zip(conv_linear(one), conv_linear(three)):
        assert torch.equal(b.weight, a.weight * 3)
        assert torch.equal(b.bias, a.bias)  # biases as drawn


def test_init_torch_keeps_what_the_layers_drew_and_kaiming_is_he_normal():
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5), nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)]
    torch.manual_seed(0)
    own = from_config(config.resolve(None, ["model.init=torch"]))
    for a, b in zip(layers, conv_linear(own)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    torch.manual_seed(0)
    xavier = from_config(config.resolve(None, []))
    torch.manual_seed(0)
    he = from_config(config.resolve(None, ["model.init=kaiming"]))
    fc1_xavier, fc1_he = xavier.fc1.linear.weight, he.fc1.linear.weight  # 30,720 weights
    assert fc1_xavier.abs().max() <= math.sqrt(6 / (256 + 120))
    assert abs(fc1_he.std().item() / math.sqrt(2 / 256) - 1) < 0.03 and abs(fc1_he.mean().item()) < 0.002
    assert torch.equal(he.fc1.linear.bias, xavier.fc1.linear.bias)


# --- eval.precise_bn_epochs -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_precise_bn_only_after_the_last_epoch_end_to_end(tmp_path, small_data, capsys):
    every = run(tmp_path, small_data, "eval.precise_bn=true", "eval.precise_bn_batches=4", name="every")
    last = run(tmp_path, small_data, "eval.precise_bn=true", "eval.precise_bn_batches=4",
               "eval.precise_bn_epochs=last", name="last", figures=True)
    rows, every_rows = runs.read_metrics(last), runs.read_metrics(every)
    assert "test_acc_precise" not in rows[0] and rows[1]["test_acc_precise"] == every_rows[1]["test_acc_precise"]
    # The same training; only epoch 1's precise-BN figure is gone.
    assert without_timing(rows) == without_timing(
        [{k: v for k, v in every_rows[0].items() if k != "test_acc_precise"}, every_rows[1]])
    csv_lines = (last / "metrics.csv").read_text().splitlines()
    assert "test_acc_precise" in csv_lines[0].split(",") and csv_lines[1].endswith(",")  # empty in epoch 1
    assert (last / "curves.png").stat().st_size > 0  # the figure draws the one point
    assert runs.summary_lines(last)[0].startswith("loss ")
    assert main(["inspect", str(last)]) == 0
    capsys.readouterr()
    # the sweep engine's precise-BN figure is the last value recorded
    from bn_lenet.sweeps.stats import value
    assert value({"rows": rows, "bn": True}, "test_acc", "precise") == rows[1]["test_acc_precise"]


# --- log.eval_every ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("every,batches,steps", [
    (0.25, 235, [59, 118, 176, 235]), (0.3, 10, [3, 6, 9, 10]), (0.5, 4, [2, 4]), (1.0, 7, [7]),
    (0.1, 5, [1, 2, 3, 4, 5]), (0.4, 1, [1]),
])
def test_curve_rows_fall_at_every_fraction_of_the_epoch_and_at_its_end(every, batches, steps):
    assert eval_steps(every, batches) == steps


def test_eval_every_writes_curve_jsonl_at_the_right_steps_and_trains_exactly_as_without(tmp_path, small_data):
    plain = run(tmp_path, small_data, "eval.batch_stats=true", name="plain")
    out = run(tmp_path, small_data, "eval.batch_stats=true", "log.eval_every=0.5", name="curve")
    assert without_timing(runs.read_metrics(out)) == without_timing(runs.read_metrics(plain))
    assert same_weights(weights(out), weights(plain))
    rows, metrics = read_jsonl(out / "curve.jsonl"), runs.read_metrics(out)
    assert [(r["step"], r["epoch"], r["examples"]) for r in rows] == [(2, 0.5, 128), (4, 1.0, 256),
                                                                      (6, 1.5, 384), (8, 2.0, 512)]
    assert set(rows[0]) == {"step", "epoch", "examples", "train_loss", "train_acc", "test_acc",
                            "test_acc_batch_stats"}
    for e, m in enumerate(metrics):  # the epoch's end is the epoch's own figures; its halves average to its loss
        first, second = rows[2 * e], rows[2 * e + 1]
        assert second["test_acc"] == m["test_acc"] and second["test_acc_batch_stats"] == m["test_acc_batch_stats"]
        assert math.isclose((first["train_loss"] + second["train_loss"]) / 2, m["loss"], rel_tol=1e-5)
        assert math.isclose((first["train_acc"] + second["train_acc"]) / 2, m["train_acc"], rel_tol=1e-9)
    assert all(0 <= r["test_acc"] <= 1 for r in rows)


def test_a_curve_without_batch_statistics_has_the_moving_accuracy_only(tmp_path, small_data):
    out = run(tmp_path, small_data, "train.epochs=1", "model.norm=layer", "log.eval_every=0.5", name="layer")
    rows = read_jsonl(out / "curve.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and "test_acc_batch_stats" not in rows[0]


def test_the_curve_and_landscape_survive_a_resume(tmp_path, small_data, monkeypatch):
    keys = ["log.eval_every=0.5", "log.landscape=true", "log.landscape_every=3", "model.dropout=0.3"]
    straight = run(tmp_path, small_data, *keys, name="straight")
    out = tmp_path / "stopped"
    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", "SIGTERM@batch:6")  # during epoch 2
    cfg = config.resolve(None, QUICK + keys)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(plots, "curves", quiet)
        m.setattr(plots, "bn_params", quiet)
        assert runs.train_run(cfg, out=out, data=small_data, log=quiet, log_error=quiet)["status"] == "interrupted"
        assert [r["step"] for r in read_jsonl(out / "curve.jsonl")] == [2, 4]
        assert [r["step"] for r in read_jsonl(out / "landscape.jsonl")] == [1, 4]
        monkeypatch.delenv("BN_LENET_TEST_SIGNAL")
        cfg, _ = runs.resume_config(out)
        assert runs.train_run(cfg, out=out, data=small_data, log=quiet, resume=True)["status"] == "finished"
    for name in ("curve.jsonl", "landscape.jsonl"):
        assert (out / name).read_text() == (straight / name).read_text()
    assert same_weights(weights(out), weights(straight))
