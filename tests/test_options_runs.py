"""The options in real short runs: eval.batch_stats and log.grad_norms (values checked by hand, files, resume),
precise BN with ghost batches, layer/group norm runs, and what `bn-lenet inspect` shows."""

import copy
import json
import math

import pytest
from helpers import quiet
import torch

from bn_lenet.training import config, runs
from bn_lenet.cli import main
from bn_lenet.training.data import epoch_order, to_float
from bn_lenet.network.model import bn_layers, from_config, moving_stats
from bn_lenet.training.train import batch_stats_test_acc, fit, make_optimizer, reestimate_bn

pytestmark = pytest.mark.usefixtures("quick_runs")

QUICK = ["train.epochs=3", "train.limit_batches=3", "train.batch_size=64", "train.threads=1"]
TIMING = ("examples_per_sec", "seconds")



def run(tmp_path, data, *overrides, name="run"):
    cfg = config.resolve(None, QUICK + list(overrides))
    out = tmp_path / name
    assert runs.train_run(cfg, out=out, data=data, log=quiet)["status"] == "finished"
    return out


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# --- eval.batch_stats ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_batch_stats_accuracy_is_each_test_batch_normalized_by_itself_and_leaves_the_model_untouched(small_data):
    torch.manual_seed(0)
    model = from_config(config.resolve(None, []))
    opt = make_optimizer(model, 1.0)
    for b in range(3):  # a little training, so the moving statistics are not the initial ones
        x, y = to_float(small_data.train_images[b * 64:(b + 1) * 64]), small_data.train_labels[b * 64:(b + 1) * 64]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step(), opt.zero_grad()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    images, labels = small_data.test_images[:300], small_data.test_labels[:300]
    got = batch_stats_test_acc(model, images, labels, batch_size=128)
    # By hand: batches of 128, 128, 44, each through a fresh copy in train mode (its own statistics).
    correct = 0
    for start in (0, 128, 256):
        copy_ = copy.deepcopy(model).train()
        with torch.no_grad():
            logits = copy_(to_float(images[start:start + 128]))
        correct += (logits.argmax(1) == labels[start:start + 128]).sum().item()
    assert got == correct / 300
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_run_with_batch_stats_records_them_and_trains_exactly_as_without(tmp_path, small_data):
    plain = run(tmp_path, small_data, name="plain")
    with_stats = run(tmp_path, small_data, "eval.batch_stats=true", name="stats")
    rows, plain_rows = runs.read_metrics(with_stats), runs.read_metrics(plain)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0.0 <= r["test_acc_batch_stats"] <= 1.0 for r in rows)
    assert rows[-1]["test_acc_batch_stats"] > 0.3  # chance is 0.1; 9 steps of BN LeNet do better
    assert without_timing([{k: v for k, v in r.items() if k != "test_acc_batch_stats"} for r in rows]) == \
        without_timing(plain_rows)
    assert "test_acc_batch_stats" in (with_stats / "metrics.csv").read_text().splitlines()[0].split(",")
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (with_stats, plain))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_epoch_line_shows_the_batch_stats_accuracy():
    from bn_lenet.training.train import EpochStats
    line = runs.format_epoch(EpochStats(1, 0.5, 0.8, 0.7, 1000.0, 1.0, test_acc_batch_stats=0.75))
    assert "test acc (batch stats) 0.750" in line


# --- log.grad_norms --------------------------------------------------------------------------------------------

def test_grad_norms_are_the_mean_over_the_epochs_steps_of_each_gradients_norm(small_data):
    cfg = config.resolve(None, ["train.epochs=1", "train.limit_batches=3", "train.batch_size=64",
                                "train.threads=1", "log.grad_norms=true", "bn.scale=false"])
    torch.manual_seed(0)
    model = from_config(cfg)
    by_hand = copy.deepcopy(model)
    from bn_lenet.training.train import GradNorms
    log = GradNorms(model)
    rows = []
    fit(model, small_data, cfg, grad_norms=log, on_epoch=lambda s: rows.append(log.row(s.epoch)))
    # By hand: the same three SGD steps, the norms written down at each step.
    opt = torch.optim.SGD(by_hand.parameters(), lr=1.0)
    order, norms = epoch_order(small_data.train_labels.shape[0], 0, 1, "cpu"), []
    for b in range(3):
        idx = order[b * 64:(b + 1) * 64]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(by_hand(to_float(small_data.train_images[idx])),
                                          small_data.train_labels[idx]).backward()
        norms.append({n: p.grad.norm().item() for n, p in by_hand.named_parameters()})
        opt.step()
    [row] = rows
    names = [k for k in row if k != "epoch"]
    assert names == ["conv1.conv.weight", "conv1.bn.beta", "conv2.conv.weight", "conv2.bn.beta",
                     "fc1.linear.weight", "fc1.bn.beta", "fc2.linear.weight", "fc2.bn.beta", "fc3.weight"]
    for name in names:  # gamma is fixed (bn.scale=false): no gradient, not logged
        want = sum(n[name] for n in norms) / 3
        assert math.isclose(row[name], want, rel_tol=1e-5), name


def test_grad_norms_file_has_one_row_per_epoch_and_survives_a_resume(tmp_path, small_data, monkeypatch):
    straight = run(tmp_path, small_data, "log.grad_norms=true", "model.norm=torch", name="straight")
    rows = [json.loads(line) for line in (straight / "grad_norms.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"conv1.conv.weight", "conv1.bn.gamma", "conv1.bn.beta", "fc3.weight"} <= set(rows[0])
    assert all(math.isfinite(v) and v > 0 for r in rows for k, v in r.items() if k != "epoch")

    out = tmp_path / "stopped"
    monkeypatch.setenv("BN_LENET_TEST_SIGNAL", "SIGTERM@batch:5")  # during epoch 2
    cfg = config.resolve(None, QUICK + ["log.grad_norms=true", "model.norm=torch"])
    assert runs.train_run(cfg, out=out, data=small_data, log=quiet, log_error=quiet)["status"] == "interrupted"
    assert [json.loads(x)["epoch"] for x in (out / "grad_norms.jsonl").read_text().splitlines()] == [1]
    monkeypatch.delenv("BN_LENET_TEST_SIGNAL")
    cfg, _ = runs.resume_config(out)
    assert runs.train_run(cfg, out=out, data=small_data, log=quiet, resume=True)["status"] == "finished"
    assert (out / "grad_norms.jsonl").read_text() == (straight / "grad_norms.jsonl").read_text()


def test_no_grad_norms_file_unless_asked(tmp_path, small_data):
    assert not (run(tmp_path, small_data, "train.epochs=1") / "grad_norms.jsonl").exists()


# --- precise BN with ghost batches ------------------------------------------------------------------------------

def test_precise_bn_with_ghost_batches_averages_the_ghost_groups_statistics(small_data):
    torch.manual_seed(0)
    model = from_config(config.resolve(None, ["bn.ghost_batch=16", "train.batch_size=64"]))
    images = small_data.train_images[:128]
    reestimate_bn(model, images, batch_size=64)
    # By hand for conv1's BN: its input is conv1.conv's output; 2 batches x 4 groups of 16, biased variance.
    with torch.no_grad():
        z = model.conv1.conv(to_float(images))
    means = [z[i:i + 16].mean((0, 2, 3)) for i in range(0, 128, 16)]
    variances = [z[i:i + 16].var((0, 2, 3), correction=0) for i in range(0, 128, 16)]
    mean, var = moving_stats(bn_layers(model)["conv1.bn"])
    torch.testing.assert_close(mean, sum(means) / 8)
    torch.testing.assert_close(var, sum(variances) / 8)


# --- layer / group norm runs and inspect -----------------------------------------------------------------------

def test_a_group_norm_run_keeps_gamma_beta_of_every_norm_layer_and_inspect_shows_its_options(
        tmp_path, small_data, capsys):
    out = run(tmp_path, small_data, "model.norm=group", "bn.groups=2", "model.placement=after",
              "model.activation=relu", "train.epochs=1")
    params = json.loads((out / "bn_params.json").read_text())
    assert list(params) == ["conv1.gn", "conv2.gn", "fc1.gn", "fc2.gn"]
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model: norm group, placement after, norm layers conv1 conv2 fc1 fc2, activation relu, bias true" in text
    assert "bn: preset pytorch (the norm default), momentum -, eps 1e-05, unbiased -, scale true, center true, " \
           "normalize -, ghost_batch -, groups 2" in text
    assert "conv1.gn   gamma" in text


@pytest.mark.parametrize("overrides,line", [
    ([], "bn: preset tutorial (the norm default), momentum 0.9, eps 1e-05, unbiased false, scale true, "
         "center true, normalize full, ghost_batch off, groups -"),
    (["model.norm=torch", "bn.momentum=0.99", "bn.center=false"],
     "bn: preset pytorch (the norm default), momentum 0.99 (nn.BatchNorm momentum 0.01), eps 1e-05, "
     "unbiased true, scale true, center false, normalize -, ghost_batch -, groups -"),
    (["bn.preset=keras", "bn.normalize=mean", "bn.ghost_batch=32", 'model.norm_layers=["fc1"]', "model.bias=false"],
     "bn: preset keras, momentum 0.99, eps 0.001, unbiased false, scale true, center true, normalize mean, "
     "ghost_batch 32, groups -"),
    (["model.norm=none"], "bn: no norm layer"),
])
def test_inspect_describes_the_effective_options(overrides, line):
    from bn_lenet.network.options import describe
    assert describe(config.resolve(None, overrides))[1] == line


def test_inspect_of_a_scratch_run_shows_both_option_lines(tmp_path, small_data, capsys):
    out = run(tmp_path, small_data, "train.epochs=1", "model.bias=false", 'model.norm_layers=["conv1", "fc2"]')
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "    model: norm scratch, placement before, norm layers conv1 fc2, activation sigmoid, bias false" in text
    assert "    bn: preset tutorial (the norm default), momentum 0.9, eps 1e-05" in text


def test_inspect_side_by_side_lists_the_norm_layers_of_both_runs_when_their_names_differ():
    from bn_lenet.cli import format_bn_table
    a = {"conv1.bn": {"gamma": [1.0, 2.0], "beta": [0.0, 0.0]}}
    b = {"conv1.gn": {"gamma": [3.0, 3.0], "beta": [1.0, 1.0]}}
    lines = format_bn_table([a, b], ["a", "b"]).splitlines()
    assert [line.split()[:2] for line in lines[3:]] == [["conv1.bn", "gamma"], ["conv1.bn", "beta"],
                                                       ["conv1.gn", "gamma"], ["conv1.gn", "beta"]]
    assert lines[5].rstrip().endswith("3.0000") and "-" in lines[3].split("|")[1]
