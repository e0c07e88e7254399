"""The distributed study's machinery on a real tiny sweep: points of train.processes 1 and 2 (BN synced and
local), 2 seeds, 2 epochs of 3 batches of 64. Each 2-process run is a real torchrun job (gloo on CPU) that
the sweep's worker launches; the engine's contrasts (contrasts.csv) are then read against figures taken from the run
directories here, never typed in.
"""

import csv
import statistics
from pathlib import Path

import pytest

from bn_lenet.training import runs
from helpers import run_of, sweep

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "scratch_bn.toml"
SPEC = f"""
question = "a tiny distributed sweep"
config = "{CONFIG}"
seeds = 2
[set]
train.epochs = 2
train.limit_batches = 3
train.batch_size = 64
train.lr = 0.1
train.threads = 1
[[points]]
"train.processes" = 1
[[points]]
"train.processes" = 2
"bn.sync" = true
[[points]]
"train.processes" = 2
"bn.sync" = false
[report]
lead = ["test_acc", "loss"]
[[report.contrast]]
a = "processes=2,sync=true"
b = "processes=1"
[[report.contrast]]
a = "processes=2,sync=false"
b = "processes=2,sync=true"
"""
SPEC_FILE = "tiny_distributed.toml"
POINTS = ["processes=1", "processes=2,sync=true", "processes=2,sync=false"]


@pytest.fixture(scope="module")
def swept(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert sweep(spec, out) == 0
    return out


def meta(out: Path, point: str, seed: int) -> dict:
    return runs.read_json(run_of(out, point, seed) / "meta.json")


def final(out: Path, point: str, seed: int, metric: str) -> float:
    return runs.read_metrics(run_of(out, point, seed))[-1][metric]


@pytest.mark.slow
def test_points_of_two_processes_are_trained_as_two_process_jobs(swept):
    for seed in (0, 1):
        assert meta(swept, "processes=1", seed)["status"] == "finished"
        assert "world_size" not in meta(swept, "processes=1", seed)
        for point, mode in (("processes=2,sync=true", "synced"), ("processes=2,sync=false", "local")):
            m = meta(swept, point, seed)
            assert (m["status"], m["world_size"], m["bn_sync"], m["epochs_done"]) == ("finished", 2, mode, 2)
            assert m["threads"] == 1  # one thread per process


@pytest.mark.slow
def test_a_rerun_trains_nothing(spec, swept, capsys):
    files = sorted(swept.glob("runs/*/*/metrics.jsonl"))
    before = [p.stat().st_mtime_ns for p in files]
    assert sweep(spec, swept) == 0
    assert "6 done, 0 to train" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in files] == before


@pytest.mark.slow
def test_the_contrasts_pair_the_seeds_and_give_the_differences_of_the_runs_own_figures(swept):
    with open(swept / "contrasts.csv") as f:
        rows = {(r["a"], r["b"], r["metric"]): r for r in csv.DictReader(f)}
    for a, b in ((POINTS[1], POINTS[0]), (POINTS[2], POINTS[1])):
        loss = rows[(a, b, "loss")]
        diffs = [final(swept, a, s, "loss") - final(swept, b, s, "loss") for s in (0, 1)]
        assert loss["paired"] == "true" and loss["n"] == "2" and loss["statistic"] == "final"
        assert float(loss["diff"]) == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    synced = rows[(POINTS[1], POINTS[0], "loss")]
    assert abs(float(synced["diff"])) < 1e-5  # the same computation: only the float reduction order differs
    assert "**" in (swept / "report.md").read_text().split("## Answer")[1].split("## Results per point")[0]
