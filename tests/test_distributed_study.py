"""The distributed study's machinery on a real tiny sweep: points of train.processes 1 and 2 (BN synced and
local), 2 seeds, 2 epochs of 3 batches of 64. Each 2-process run is a real torchrun job (gloo on CPU) that
the sweep's worker launches; the answer (bn_lenet/sweeps/answer_distributed.py) is then read against figures taken
from the run directories here, never typed in.
"""

import os
import re
from pathlib import Path

import pytest

from bn_lenet.sweeps import answer_distributed
from bn_lenet.training import runs
from bn_lenet.sweeps.answers_common import by_seed, finals, mean, paired
from bn_lenet.cli import main
from bn_lenet.sweeps.stats import examples_per_sec
from bn_lenet.sweeps.sweep import spec_for
from bn_lenet.sweeps.answers import ANSWERS, ONE_LINE
from bn_lenet.sweeps.report import load_sweep
from bn_lenet.sweeps.spec import resolve_runs

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
answer = "distributed"
"""
POINTS = ["processes=1", "processes=2,sync=true", "processes=2,sync=false"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny_distributed.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def swept(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    return out


def meta(out: Path, point: str, seed: int) -> dict:
    return runs.read_json(out / "runs" / point / f"seed-{seed}" / "meta.json")


def loaded(spec, out) -> dict:
    s = spec_for(str(spec))
    return load_sweep(s, out, resolve_runs(s, out))


def test_points_of_two_processes_are_trained_as_two_process_jobs(swept):
    for seed in (0, 1):
        assert meta(swept, "processes=1", seed)["status"] == "finished"
        assert "world_size" not in meta(swept, "processes=1", seed)
        for point, mode in (("processes=2,sync=true", "synced"), ("processes=2,sync=false", "local")):
            m = meta(swept, point, seed)
            assert (m["status"], m["world_size"], m["bn_sync"], m["epochs_done"]) == ("finished", 2, mode, 2)
            assert m["threads"] == 1  # one thread per process


def test_a_rerun_trains_nothing(spec, swept, capsys):
    files = sorted(swept.glob("runs/*/*/metrics.jsonl"))
    before = [p.stat().st_mtime_ns for p in files]
    assert main(["sweep", str(spec), "--out", str(swept), "--quiet"]) == 0
    assert "6 done, 0 to train" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in files] == before


def test_the_answer_is_registered_and_in_the_report(swept):
    assert ANSWERS["distributed"] is answer_distributed.answer
    assert ONE_LINE["distributed"] is answer_distributed.one_line
    report = (swept / "report.md").read_text()
    assert "Local against synced BN, 2 processes (32 examples per process of the global batch of 64)" in report


def test_the_answer_gives_local_minus_synced_per_seed_from_the_runs(spec, swept):
    sweep = loaded(spec, swept)
    text = "\n".join(answer_distributed.answer(sweep))
    local, synced = (next(p for p in sweep["points"] if p["id"] == i) for i in POINTS[2:0:-1])
    diffs = paired(by_seed(local), by_seed(synced))
    assert f"local minus synced: {mean(diffs):+.3f}" in text
    assert f"{mean(finals(local)) - mean(finals(synced)):+.3f} in test acc" in text


def test_the_answer_compares_synced_two_processes_with_one_seed_by_seed(spec, swept):
    sweep = loaded(spec, swept)
    text = "\n".join(answer_distributed.answer(sweep))
    one, synced = (next(p for p in sweep["points"] if p["id"] == i) for i in POINTS[:2])
    gap = max(abs(d) for d in paired(by_seed(synced, 1, "loss"), by_seed(one, 1, "loss")))
    assert gap < 1e-5  # the same computation: only the float reduction order differs
    assert f"differs by at most {gap:.1e} in any seed" in text


def test_the_answer_gives_the_jobs_examples_per_second_and_the_cores(spec, swept):
    sweep = loaded(spec, swept)
    text = "\n".join(answer_distributed.answer(sweep))
    for point, name in zip(POINTS, ("1 process", "2 processes, synced BN", "2 processes, local BN")):
        runs_ = next(p for p in sweep["points"] if p["id"] == point)["runs"]
        speeds = [examples_per_sec(r["rows"]) for r in runs_]
        assert re.search(rf"{re.escape(name)} \(1 thread per process\) {mean(speeds):.0f} ± \d+ \(n=2\)", text), \
            (name, text)
    assert f"These runs had {len(os.sched_getaffinity(0))} CPU cores" in text
    line = answer_distributed.one_line(sweep)
    assert line.startswith("test acc, local minus synced BN ") and " at 2 processes; synced minus 1 process " in line
    assert "fastest " in line and "examples/s), slowest " in line


def test_synced_against_one_process_is_called_rounding_only_while_the_loss_gap_stays_at_rounding_size():
    same = answer_distributed.same_or_not
    assert same([0.0, 0.0], [2e-6, 1e-6], [5e-6, 4e-6]).startswith("the same computation, every seed's final")
    assert "up to float rounding" in same([0.0001, -0.0001], [4e-6, 1e-6], [7e-6, 5e-6])
    assert "at most 0.0001 in any seed" in same([0.0001, -0.0001], [4e-6, 1e-6], [7e-6, 5e-6])
    assert "grows over the epochs" in same([0.01, -0.02], [3e-3, 1e-3], [7e-6, 5e-6])
