"""experiments/reproduce.py end to end on the real data, cut short: side by side (the CPU default) and one
after the other; a stop reaches both side-by-side runs, which keep their finished epochs.

Every run here is on the CPU (train.device=cpu): the layout checked (processes side by side, threads each) is
the CPU's; on a GPU the reproduction trains its runs one after the other in one process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test trains the reproduction's two runs in child processes

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--set", "train.device=cpu"]
SHORT = [*CPU, "--set", "train.limit_batches=2", "--set", "train.epochs=1"]


def reproduce(tmp_path, *args, **popen):
    cmd = [sys.executable, str(ROOT / "experiments" / "reproduce.py"), "--quiet", "--out", str(tmp_path / "out"),
           *args]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def run_dirs(tmp_path) -> dict:
    return {p.name.split("-")[1]: p for p in (tmp_path / "results" / "runs").iterdir()}


def test_side_by_side_reproduction_trains_both_variants_and_writes_the_summary(tmp_path):
    proc = reproduce(tmp_path, "--jobs", "2", *SHORT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "[scratch_bn] epoch 1:" in out and "[torch_bn] epoch 1:" in out
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "side by side, 1 thread(s) each (--jobs 2)" in summary
    assert "d2l-en 0.17.5 = Dive into Deep Learning" in summary  # the published figures' source, in full
    for name in ("scratch_bn", "torch_bn"):
        meta = json.loads((tmp_path / "out" / name / "meta.json").read_text())
        assert meta["status"] == "finished" and meta["threads"] == 1
        assert f"| {name} | **ours**" in summary


def test_one_after_the_other_with_jobs_1(tmp_path):
    proc = reproduce(tmp_path, "--jobs", "1", *SHORT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "one run after the other in one process (--jobs 1)" in (tmp_path / "out" / "summary.md").read_text()


def test_a_stop_reaches_both_side_by_side_runs_which_keep_their_epochs(tmp_path):
    proc = reproduce(tmp_path, "--jobs", "2", *CPU, "--set", "train.limit_batches=2", "--set", "train.epochs=1000")
    seen = []
    for line in proc.stdout:  # wait until both runs have finished an epoch
        seen.append(line)
        if all(any(f"[{n}] epoch 1:" in s for s in seen) for n in ("scratch_bn", "torch_bn")):
            break
    proc.send_signal(signal.SIGTERM)  # to the reproduction only: it passes the stop on to its runs
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert not (tmp_path / "out" / "summary.md").exists()  # no summary from partial runs
    for name, run_dir in run_dirs(tmp_path).items():
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["status"] == "interrupted" and meta["epochs_done"] >= 1, (name, meta)
        assert f"error: {name} did not finish (interrupted)" in out
    assert sorted(run_dirs(tmp_path)) == ["scratch_bn", "torch_bn"]


def test_the_benchmark_times_the_real_reproduction_and_reads_its_results():
    from bn_lenet.anchors.benchmark import time_reproduction
    r = time_reproduction(["train.device=cpu", "train.limit_batches=2", "train.epochs=1"])
    assert sorted(r["results"]) == ["scratch_bn", "torch_bn"]
    assert all(0 < m["loss"] < 3 and 0 <= m["test_acc"] <= 1 for m in r["results"].values())
    side_by_side = len(os.sched_getaffinity(0)) >= 2
    assert r["processes"] == (3 if side_by_side else 1)  # the reproduction and, side by side (CPU), its two runs
    assert r["peak_rss_mb"] > 100 * r["processes"]  # each process holds torch
    assert r["wall_seconds"] > 0
