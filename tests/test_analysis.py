"""The analysis engine (bn_lenet/sweeps/analysis.py) on sweeps with known numbers: what a [report] declares
becomes rows of contrasts.csv with the rule's numbers and verdicts; bad declarations are one error line."""

import csv
import shutil
from pathlib import Path

import pytest

from bn_lenet.cli import main
from bn_lenet.sweeps import sentences
from bn_lenet.sweeps.analysis import analyse
from bn_lenet.sweeps.report import load_sweep
from bn_lenet.sweeps.spec import points_of, resolve_runs, spec_from_file
from helpers import epochs, fake_sweep

NORM_LR = """
seeds = 5
[grid]
"model.norm" = ["none", "scratch"]
"train.lr" = [0.1, 1.0, 10.0]
"""


def norm_lr(values, seed):
    """No BN trains at lr 0.1 and 1 and diverges at 10; BN trains at every lr, 0.05 higher than no BN."""
    norm, lr = values["model.norm"], values["train.lr"]
    if norm == "none" and lr == 10.0:
        return "diverged"
    base = 0.80 + 0.01 * seed + (0.05 if norm == "scratch" else 0) - (0.1 if lr == 10.0 else 0)
    return epochs(base - 0.2, base, base + 0.002, base - 0.002, loss=0.5 - base / 2)


def contrasts(out) -> list:
    with open(out / "contrasts.csv") as f:
        return list(csv.DictReader(f))


def report(spec_file, out) -> int:
    return main(["sweep", str(spec_file), "--out", str(out), "--report-only"])


def test_by_default_each_swept_value_is_set_against_the_first_on_every_lead_metric(tmp_path):
    spec_file, out = fake_sweep(tmp_path, NORM_LR, norm_lr)
    assert report(spec_file, out) == 0
    rows = contrasts(out)
    norm_rows = [r for r in rows if r["a"].startswith("norm=scratch") and r["b"].startswith("norm=none")]
    lr_rows = [r for r in rows if r["a"].split(",")[0] == r["b"].split(",")[0]]
    assert len(norm_rows) == 3 * 2 and len(lr_rows) == 2 * 2 * 2  # 3 lrs x 2 metrics; 2 norms x 2 lrs x 2 metrics
    acc = next(r for r in norm_rows if r["a"] == "norm=scratch,lr=1" and r["metric"] == "test_acc")
    # the steady statistic (no precise BN recorded): the mean of the last 3 epochs; paired by seed
    assert acc["statistic"] == "last3_mean" and acc["paired"] == "true" and acc["n"] == "5"
    assert float(acc["diff"]) == pytest.approx(0.05) and acc["verdict"] == "higher"
    diverged = next(r for r in norm_rows if r["a"] == "norm=scratch,lr=10" and r["metric"] == "test_acc")
    assert diverged["diff"] == "no finished run" and diverged["verdict"] == "inconclusive"
    assert set(rows[0]) >= {"a", "b", "metric", "statistic", "n", "paired", "mean_a", "mean_b", "diff", "ci_low",
                            "ci_high", "p", "verdict"}


def test_a_contrast_for_each_value_of_another_key_a_limit_and_a_ranking(tmp_path):
    spec = NORM_LR + """
[report]
names = { none = "no BN", scratch = "BN" }
[[report.contrast]]
a = { "model.norm" = "scratch" }
b = { "model.norm" = "none" }
for_each = ["train.lr"]
metrics = ["test_acc"]
[[report.limit]]
key = "train.lr"
by = "model.norm"
metric = "test_acc"
at_least = 0.7
ratio = ["scratch", "none"]
[[report.ranking]]
metric = "test_acc"
for_each = ["model.norm"]
"""
    spec_file, out = fake_sweep(tmp_path, spec, norm_lr)
    sweep = load_sweep(spec_from_file(spec_file), out, resolve_runs(spec_from_file(spec_file), out))
    result = analyse(sweep)
    contrast, limit, ranking = result["items"]
    assert len(contrast["rows"]) == 3
    # BN trains up to lr 10 (the grid's top), no BN up to 1 (diverged at 10): ratio 10x, bounds 1x .. unbounded
    assert limit["series"]["scratch"]["largest"] == 10.0 and limit["series"]["none"]["largest"] == 1.0
    assert limit["series"]["none"]["smallest"] == 0.1 and limit["series"]["none"]["previous"] is None
    (ratio,) = limit["ratios"]
    assert ratio["value"] == pytest.approx(10) and ratio["low"] == pytest.approx(1) and ratio["high"] == float("inf")
    # each norm's best lr: 1 or 0.1 tie (same numbers), 10 is lower beyond noise
    best = {g["best"] for g in ranking["groups"]}
    assert best <= {"norm=none,lr=0.1", "norm=none,lr=1", "norm=scratch,lr=0.1", "norm=scratch,lr=1"}
    verdicts = {result["contrasts"][i]["b"]: result["contrasts"][i]["verdict"] for g in ranking["groups"]
                for i in g["rows"]}
    assert verdicts["norm=scratch,lr=10"] == "higher"  # the best is higher than lr 10
    # Holm runs over every contrast of the study, declared and ranking ones together
    assert all(r["p_holm"] >= r["p_t"] for r in result["contrasts"] if r.get("p_t") is not None)


def test_one_metric_against_another_on_the_same_runs_is_paired_by_run(tmp_path):
    spec = """
seeds = 4
[grid]
"model.norm" = ["scratch"]
"train.lr" = [1.0, 0.1]
[report]
[[report.contrast]]
a = { "train.lr" = 1.0 }
metrics = ["test_acc_precise:final"]
versus = "test_acc:final"
"""
    def outcome(values, seed):
        return [{"loss": 0.3, "test_acc": 0.75 + 0.01 * seed, "test_acc_precise": 0.87 + 0.01 * seed}]
    spec_file, out = fake_sweep(tmp_path, spec, outcome)
    assert report(spec_file, out) == 0
    (row,) = contrasts(out)
    assert row["a"] == row["b"] == "norm=scratch,lr=1" and row["metric"] == "test_acc_precise vs test_acc"
    assert float(row["diff"]) == pytest.approx(0.12) and row["verdict"] == "higher" and row["paired"] == "true"


def test_precise_bn_decides_test_accuracy_where_recorded_and_no_bn_has_nothing_to_reestimate(tmp_path):
    spec = """
seeds = 3
[[points]]
"model.norm" = "scratch"
[[points]]
"model.norm" = "none"
[report]
lead = ["test_acc"]
"""
    def outcome(values, seed):
        if values["model.norm"] == "none":
            return epochs(0.79, 0.79, 0.79)
        return [{"loss": 0.3, "test_acc": a, "test_acc_precise": 0.87} for a in (0.6, 0.9, 0.7)]
    spec_file, out = fake_sweep(tmp_path, spec, outcome)
    assert report(spec_file, out) == 0
    (row,) = contrasts(out)
    assert row["a"] == "norm=none" and row["b"] == "norm=scratch"  # each point against the first
    assert row["statistic"] == "precise" and float(row["diff"]) == pytest.approx(0.79 - 0.87)


def test_zipped_keys_advance_together_and_when_sets_apply_to_the_matching_points(tmp_path):
    spec = """
seeds = 1
[grid]
"model.norm" = ["scratch", "none"]
[zip]
"train.batch_size" = [16, 256]
"train.lr" = [0.0625, 1]
[[when]]
"model.norm" = "scratch"
set = { "eval.batch_stats" = true }
"""
    (tmp_path / "s.toml").write_text(spec)
    points = points_of(spec_from_file(tmp_path / "s.toml"))
    assert [p["id"] for p in points] == ["norm=scratch,batch_size=16,lr=0.0625", "norm=scratch,batch_size=256,lr=1",
                                         "norm=none,batch_size=16,lr=0.0625", "norm=none,batch_size=256,lr=1"]
    assert [p["set"] for p in points] == [{"eval.batch_stats": True}] * 2 + [{}] * 2


def test_the_sentences_carry_the_numbers_and_the_verdict(tmp_path):
    spec_file, out = fake_sweep(tmp_path, NORM_LR, norm_lr)
    sweep = load_sweep(spec_from_file(spec_file), out, resolve_runs(spec_from_file(spec_file), out))
    result = analyse(sweep)
    row = next(r for r in result["contrasts"] if r["a"] == "norm=scratch,lr=1" and r["metric"] == "test_acc")
    text = sentences.contrast_sentence(sweep, row, hide=["train.lr"])
    assert text.startswith("norm=scratch vs norm=none at lr=1, test acc, mean of the last 3 epochs: 0.870 vs 0.820")
    assert "+0.050 [" in text and "**higher**" in text and "n=5 paired" in text
    line = sentences.one_line(sweep, result)
    assert "norm=scratch vs norm=none at lr=1: test acc (last3 mean) +0.050 higher" in line
    diverged = next(r for r in result["contrasts"] if r["a"] == "norm=scratch,lr=10" and r["metric"] == "loss")
    assert "no finished run" in sentences.contrast_sentence(sweep, diverged)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The NORM_LR sweep faked and reported once (drawing its figures is the slow part); each bad table below
    starts from a copy of its folder."""
    folder = tmp_path_factory.mktemp("reported")
    assert report(*fake_sweep(folder, NORM_LR, norm_lr)) == 0
    return folder


@pytest.mark.parametrize("report_table, message", [
    ('[report]\nfoo = 1', "[report] has unknown key 'foo'"),
    ('[report]\nk = 0', "[report] k = 0 is out of range"),
    ('[report]\nk = 9', "k = 9 is out of range: the shortest finished run has 4 epoch(s)"),
    ('[report]\nmargin = { test_acc = -1 }', "[report] margin must be a table of metric = a number > 0"),
    ('[[report.contrast]]\na = "norm=scratch,lr=3"\nb = "norm=none,lr=1"', "no point 'norm=scratch,lr=3'"),
    ('[[report.contrast]]\na = { "bn.eps" = 1 }\nb = "norm=none,lr=1"', "'bn.eps' is not a swept key"),
    ('[[report.contrast]]\na = "norm=none,lr=1"\nb = "norm=none,lr=0.1"\nmetrics = ["top5"]',
     "metric 'top5' is recorded by no run"),
    ('[[report.limit]]\nkey = "train.lr"\nbogus = 1', "[[report.limit]] 1: unknown key 'bogus'"),
])
def test_a_bad_report_table_is_one_error_line_and_rewrites_nothing(reported, tmp_path, capsys, report_table, message):
    shutil.copytree(reported, tmp_path, dirs_exist_ok=True)
    spec_file, out = tmp_path / "spec.toml", tmp_path / "out"  # as fake_sweep names them
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    spec_file.write_text(NORM_LR + report_table + "\n")
    capsys.readouterr()
    assert report(spec_file, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_an_ad_hoc_two_value_grid_sweep_on_the_real_data_writes_contrasts_for_its_key(fashion_mnist, tmp_path):
    out = tmp_path / "out"
    config = Path(__file__).resolve().parents[1] / "configs" / "scratch_bn.toml"
    argv = ["sweep", str(config), "--grid", "model.norm=none,scratch", "--seeds", "3", "--set",
            "train.epochs=1", "--set", "train.limit_batches=15", "--set", "train.device=cpu", "--out", str(out),
            "--quiet"]
    assert main(argv) == 0
    rows = contrasts(out)
    assert [(r["a"], r["b"], r["metric"]) for r in rows] == [("norm=scratch", "norm=none", "test_acc"),
                                                              ("norm=scratch", "norm=none", "loss")]
    assert all(r["paired"] == "true" and r["n"] == "3" for r in rows)
    assert all(r["verdict"] in ("higher", "lower", "equivalent", "inconclusive") for r in rows)
    # the numbers are the runs' own: the mean over seeds of the per-seed difference of the final loss
    from bn_lenet.training.files import read_metrics
    diffs = [read_metrics(out / "runs" / "norm=scratch" / f"seed-{s}")[-1]["loss"]
             - read_metrics(out / "runs" / "norm=none" / f"seed-{s}")[-1]["loss"] for s in range(3)]
    assert float(rows[1]["diff"]) == pytest.approx(sum(diffs) / 3)
