"""Figures recorded along the steps in the engine: steps to a target from curve.jsonl (the speed study), the
landscape.jsonl means per run (the landscape study), per-layer and difference metrics, and their figures."""

import csv

import pytest

from bn_lenet.cli import main
from helpers import epochs, fake_sweep

NORMS = """
seeds = 5
[grid]
"model.norm" = ["none", "scratch", "torch"]
[report]
lead = ["test_acc", "loss", "test_acc_batch_stats:reach0.75", "train_loss:reach0.6"]
[[report.contrast]]
a = { "model.norm" = "none" }
b = { "model.norm" = "scratch" }
metrics = ["test_acc_batch_stats:reach0.75", "train_loss:reach0.6"]
[[report.contrast]]
a = { "model.norm" = "torch" }
b = { "model.norm" = "scratch" }
metrics = ["test_acc_batch_stats:reach0.75"]
[[report.contrast]]
a = { "model.norm" = "scratch" }
b = { "model.norm" = "none" }
metrics = ["ics_l2.fc1", "loss_max-loss_min", "grad_change:landscape_mean", "train_acc-test_acc:final"]
"""

# no BN reaches test acc 0.75 at step 100 + 10 * seed, BN at step 10; nn.BatchNorm never does
REACHED = {"none": lambda seed: 100 + 10 * seed, "scratch": lambda seed: 10, "torch": lambda seed: None}


def curve(values, seed):
    norm = values["model.norm"]
    at = REACHED[norm](seed)
    key = "test_acc" if norm == "none" else "test_acc_batch_stats"  # no BN: no batch statistics to test with
    rows = [{"step": s, "epoch": s / 200, "train_loss": 2.0 if at is None or s < at else 0.5, "test_acc": 0.1,
             key: 0.5 if at is None or s < at else 0.8} for s in range(10, 301, 10)]
    land = [{"step": s, "loss": 1.0, "loss_min": 1.0, "loss_max": 1.0 + (0.2 if norm == "none" else 0.1),
             "grad_change": 2.0 if norm == "none" else 0.5 + 0.01 * seed,
             "ics_l2": {"conv2": 0.1, "fc1": 0.01 if norm == "none" else 0.3 + 0.1 * k}} for k, s in enumerate((1, 51))]
    return {"curve.jsonl": rows, "landscape.jsonl": land}


def norms(values, seed):
    rows = epochs(0.80, 0.81, 0.82 + 0.001 * seed)
    rows[-1]["train_acc"] = 0.90 if values["model.norm"] == "none" else 0.85
    return rows


def contrasts(out) -> list:
    with open(out / "contrasts.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """One fake sweep with curves and landscapes, reported once for the tests that only read it."""
    spec_file, out = fake_sweep(tmp_path_factory.mktemp("steps"), NORMS, norms, curve)
    assert main(["sweep", str(spec_file), "--out", str(out), "--report-only"]) == 0
    return out


def test_steps_to_a_target_are_read_from_the_curve_with_their_ratio_and_no_default_margin(reported):
    out = reported
    rows = contrasts(out)
    acc = next(r for r in rows if r["a"] == "norm=none" and r["statistic"] == "reach0.75")
    # no BN: steps 100..140 (mean 120) read from its own test_acc; BN: step 10 every seed
    assert float(acc["mean_a"]) == pytest.approx(120) and float(acc["mean_b"]) == pytest.approx(10)
    assert float(acc["ratio"]) == pytest.approx(12) and acc["reached"] == "5/5+5/5"
    assert acc["verdict"] == "higher" and acc["paired"] == "true" and acc["margin"] == ""
    loss = next(r for r in rows if r["a"] == "norm=none" and r["metric"] == "train_loss")
    assert float(loss["diff"]) == pytest.approx(110)
    never = next(r for r in rows if r["a"] == "norm=torch")
    assert never["note"] == "the target is not reached" and never["reached"] == "0/5+5/5"
    text = (out / "report.md").read_text()
    assert "steps to test acc (batch statistics) >= 0.75" in text and "12x the steps (reached by 5/5+5/5 runs)" in text
    assert "the target is not reached (reached by 0/5+5/5 runs)" in text


def test_landscape_means_per_layer_and_difference_metrics_are_compared_per_seed(reported):
    out = reported
    rows = {r["metric"]: r for r in contrasts(out) if r["a"] == "norm=scratch"}
    ics = rows["ics_l2.fc1"]  # BN: mean of 0.3 and 0.4 over the two measurements; no BN: 0.01
    assert ics["statistic"] == "landscape_mean" and float(ics["diff"]) == pytest.approx(0.35 - 0.01)
    assert float(rows["loss_max-loss_min"]["diff"]) == pytest.approx(0.1 - 0.2)
    assert float(rows["grad_change"]["mean_a"]) == pytest.approx(0.52) and rows["grad_change"]["verdict"] == "lower"
    gap = rows["train_acc-test_acc"]  # the final epoch: 0.85 - 0.82.. against 0.90 - 0.82..
    assert float(gap["diff"]) == pytest.approx(-0.05) and gap["margin"] == ""
    for figure in ("steps_curve.png", "steps_landscape.png", "steps_ics.png"):
        assert (out / figure).stat().st_size > 10_000, figure


def test_a_damaged_curve_file_makes_its_run_corrupt_and_the_report_says_so(tmp_path):
    spec_file, out = fake_sweep(tmp_path, NORMS, norms, curve)
    (out / "runs" / "norm=none" / "seed-0" / "curve.jsonl").write_text('{"step": 10}\nnot json\n')
    assert main(["sweep", str(spec_file), "--out", str(out), "--report-only"]) == 0
    text = (out / "report.md").read_text()
    assert "norm=none seed 0: **corrupt**" in text and "curve.jsonl" in text
    acc = next(r for r in contrasts(out) if r["a"] == "norm=none" and r["statistic"] == "reach0.75")
    assert acc["reached"] == "4/5+5/5"
